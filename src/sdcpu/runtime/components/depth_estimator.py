"""depth2img's depth estimator: its image processor, and its prediction at the latent size.

The depth map comes from the converted DPT (Ranftl et al., https://arxiv.org/abs/2103.13413), which
predicts relative inverse depth (larger is nearer), or from the user (a 16-bit PNG or a `.npy`, in the
same convention). As diffusers does, it is resized to the latent size (bicubic, as torch's
`interpolate(mode="bicubic", align_corners=False)`) and scaled to [-1, 1] per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError


@dataclass(frozen=True)
class DepthPreprocess:
    """The depth estimator's image processor (transformers' DPTImageProcessor settings)."""

    height: int = 384
    width: int = 384
    resample: int = 3  # PIL's BICUBIC
    rescale_factor: float = 1 / 255
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DepthPreprocess:
        size = config.get("size", {})
        return cls(
            height=int(size.get("height", 384)),
            width=int(size.get("width", 384)),
            resample=int(config.get("resample", 3)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            mean=tuple(float(v) for v in config.get("image_mean", (0.5,) * 3)),
            std=tuple(float(v) for v in config.get("image_std", (0.5,) * 3)),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(1, 3, height, width) float32 pixel values for the DPT."""
        resized = image.convert("RGB").resize((self.width, self.height), resample=Image.Resampling(self.resample))
        scaled = np.asarray(resized, dtype=np.float32) * np.float32(self.rescale_factor)
        normalised = (scaled - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    # Keys' cubic convolution kernel at distances 1 + t, t, 1 - t, 2 - t (torch's upsample_bicubic2d).
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_axis(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    length = array.shape[axis]
    source = (np.arange(size) + 0.5) * (length / size) - 0.5
    first = np.floor(source).astype(np.int64)
    weights = _cubic_weights((source - first).astype(np.float32))
    taps = np.clip(first[:, None] + np.arange(-1, 3)[None, :], 0, length - 1)
    picked = np.take(array, taps, axis=axis)  # the axis becomes (size, 4)
    shape = [1] * picked.ndim
    shape[axis], shape[axis + 1] = size, 4
    return (picked * weights.reshape(shape)).sum(axis=axis + 1)


def resize_bicubic(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) -> (N, height, width), as torch's bicubic interpolation with align_corners=False."""
    return _resize_axis(_resize_axis(array.astype(np.float32), height, 1), width, 2).astype(np.float32)


def normalised_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) depth -> (N, 1, height, width) in [-1, 1], each image by its own minimum and maximum."""
    resized = resize_bicubic(depth, height, width)
    low = resized.min(axis=(1, 2), keepdims=True)
    high = resized.max(axis=(1, 2), keepdims=True)
    if np.any(high - low <= 0):
        raise SdcpuError("the depth map is flat (one value everywhere); give one with some depth in it")
    return (2.0 * (resized - low) / (high - low) - 1.0)[:, None].astype(np.float32)
