"""Pixels in and out: the init image for img2img, decoded latents to PIL, and PNG text metadata."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.outputs import follow_umask

# 50 megapixels: a large photo (an 8192x6144 one is 50.3), about 150 MB decoded. Checked from the header,
# before the pixels are decoded: a small PNG can declare 10000x10000 and take gigabytes to decode.
MAX_INIT_PIXELS = 50_000_000


def open_init_image(source: str | Path | Image.Image, name: str = "init image") -> Image.Image:
    """An input image (the init image, a mask, ...: `name`) as RGB, its size checked before decoding."""
    if isinstance(source, Image.Image):
        _check_pixels(source, f"the {name}")
        return source.convert("RGB")
    try:
        with Image.open(source) as image:
            _check_pixels(image, f"the {name} {source}")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as err:
        raise SdcpuError(f"cannot read the {name} {source}: {err}") from err


def _check_pixels(image: Image.Image, name: str) -> None:
    if image.width * image.height > MAX_INIT_PIXELS:
        raise SdcpuError(
            f"{name} is {image.width}x{image.height}, over the {MAX_INIT_PIXELS / 1e6:.0f}-megapixel limit; "
            "scale it down first"
        )


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
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(suffix=".png.partial", dir=folder)
    except OSError as err:
        raise SdcpuError(f"cannot write to {folder}: {err.strerror}; choose another --out") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(png_bytes(image, metadata))
        follow_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(image: Image.Image, metadata: dict[str, str] | None = None) -> bytes:
    """The image as PNG bytes, with `metadata` as text chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
