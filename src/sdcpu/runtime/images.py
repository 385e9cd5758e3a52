"""Pixels in and out: the init image for img2img, decoded latents to PIL, and PNG text metadata."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdcpu.runtime.errors import SdcpuError


def open_init_image(source: str | Path | Image.Image) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise SdcpuError(f"cannot read the init image {source}: {err}") from err


def image_to_array(image: Image.Image, width: int, height: int) -> np.ndarray:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1], resized (Lanczos) as diffusers' VaeImageProcessor does."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return (pixels.transpose(2, 0, 1)[None] * 2.0 - 1.0).astype(np.float32)


def decoded_to_float(decoded: np.ndarray) -> np.ndarray:
    """VAE output (N, 3, H, W) in about [-1, 1] -> (N, H, W, 3) float32 in [0, 1]."""
    return np.clip(decoded / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1).astype(np.float32)


def float_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in images]


def save_png(image: Image.Image, path: Path, metadata: dict[str, str]) -> None:
    """Write atomically (temporary file + rename) with `metadata` as PNG text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_itxt(key, value)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(suffix=".png.partial", dir=folder)
    except OSError as err:
        raise SdcpuError(f"cannot write to {folder}: {err.strerror}; choose another --out") from err
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
