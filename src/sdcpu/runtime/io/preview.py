"""Cheap previews of the latents during denoising: a linear map from the latent channels to RGB, at the
latent resolution, in place of the VAE decoder (2.5 TFLOP for an SD 1.5 image at 512x512).

A1111's "Approx cheap" preview uses such a map with coefficients written by hand for SD's VAE. Here it
is fitted once per model, by least squares, to what the model's own decoder makes of a few random
latents (each decoded pixel block averaged to one latent pixel), so any VAE, the demo's included, gets
one. It is approximate by design: a preview of where the image is going, not the image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError

FIT_LATENTS, FIT_SIZE = 2, 16  # random latents decoded once, of FIT_SIZE x FIT_SIZE latent pixels


class LatentPreview:
    """`decode(latent_sample) -> pixels in [-1, 1]`: the VAE decoder; `scaling`: the VAE's scaling factor
    (the UNet's latents are the VAE's times it); `factor`: latent to pixel size."""

    def __init__(self, decode: Callable[[np.ndarray], np.ndarray], channels: int, scaling: float, factor: int):
        rng = np.random.default_rng(0)
        latents = rng.standard_normal((FIT_LATENTS, channels, FIT_SIZE, FIT_SIZE), dtype=np.float32)
        pixels = decode((latents / np.float32(scaling)).astype(np.float32))
        n, c, h, w = pixels.shape
        pooled = pixels.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))
        inputs = np.concatenate([_rows(latents), np.ones((latents.size // channels, 1), np.float32)], axis=1)
        self.weights = np.linalg.lstsq(inputs, _rows(pooled), rcond=None)[0]  # (channels + 1, 3)
        self.factor = factor

    def __call__(self, latents: np.ndarray) -> Image.Image:
        """The first image of a batch of UNet-space latents (N, C, h, w), as an RGB image of h x w pixels
        scaled up to the image's size."""
        rows = _rows(latents[:1])
        rgb = np.concatenate([rows, np.ones((len(rows), 1), np.float32)], axis=1) @ self.weights
        _, _, h, w = latents.shape
        pixels = np.clip(rgb.reshape(h, w, 3) / 2 + 0.5, 0, 1)
        image = Image.fromarray((pixels * 255).round().astype(np.uint8))
        return image.resize((w * self.factor, h * self.factor), Image.Resampling.NEAREST)


def _rows(array: np.ndarray) -> np.ndarray:
    # (N, C, h, w) -> (N * h * w, C): one row per latent pixel
    return array.transpose(0, 2, 3, 1).reshape(-1, array.shape[1]).astype(np.float32)


def check_preview(every: int, path: Path | None) -> Path:
    """The preview file, checked before any work: SdcpuError, saying what to do, for a count below 1, a
    missing or non-PNG name, a folder, or a folder to write in that is missing or read-only."""
    if every < 1 or path is None or path.suffix.lower() != ".png":
        raise SdcpuError(f"previews need --preview-every of at least 1 and a .png --preview-out; got {every}, {path}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise SdcpuError(f"--preview-out {path} is a folder; give a file name such as {path / 'preview.png'}")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise SdcpuError(f"--preview-out {path}: its folder {path.parent} does not exist or is not writable")
    return path


def preview_writer(
    preview: Callable[[np.ndarray], Image.Image], every: int, path: Path | None
) -> Callable[[int, int, np.ndarray], None]:
    """A step callback that writes `preview(latents)` to the PNG `path` every `every` steps and at the last
    one (atomically: a viewer that reloads the file never sees half of it)."""
    from sdcpu.runtime.io.images import save_png

    target = check_preview(every, path)

    def write(step: int, total: int, latents: np.ndarray) -> None:
        if step % every == 0 or step == total:
            save_png(preview(latents), target, {"sdcpu_preview_step": f"{step}/{total}"})

    return write
