"""Annotators ("preprocessors", "modules" in A1111): a photo to the control image a ControlNet was trained
on. Torch-free. Pose, scribble, lineart and the others are given as control images ("none"); depth runs
a converted depth estimator (depth.py), where the pipeline was given one (`Annotators`).

canny: Canny's edge detector (https://doi.org/10.1109/TPAMI.1986.4767851) as OpenCV's `cv2.Canny(image,
100, 200)` runs it, which is what A1111's "canny" module calls: no smoothing first, 3x3 Sobel gradients
of each colour channel with the strongest channel kept per pixel, L1 magnitude |gx| + |gy|, thinning to
the local maxima across the edge, then hysteresis (weak edges kept only where joined to strong ones).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError

CANNY_LOW, CANNY_HIGH = 100, 200  # A1111's defaults
TAN_22_5 = np.tan(np.pi / 8)


def _sobel(channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(channel, 1, mode="edge")
    # [-1 0 1; -2 0 2; -1 0 1] and its transpose
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def _gradients(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Per channel, then the channel whose magnitude is largest at each pixel.
    grads = [_sobel(pixels[..., c].astype(np.int32)) for c in range(pixels.shape[-1])]
    gx, gy = np.stack([g[0] for g in grads]), np.stack([g[1] for g in grads])
    magnitude = np.abs(gx) + np.abs(gy)
    best = np.argmax(magnitude, axis=0)[None]
    pick = lambda a: np.take_along_axis(a, best, axis=0)[0]  # noqa: E731
    return pick(gx), pick(gy), pick(magnitude)


def _thin(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    # Keep a pixel whose magnitude is a maximum along its gradient's direction, binned to 0, 45, 90, 135
    # degrees; ties go to the first of the two neighbours, as OpenCV's (> on one side, >= on the other).
    m = np.pad(magnitude, 1)
    h, w = magnitude.shape
    at = lambda dy, dx: m[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]  # noqa: E731
    ax, ay = np.abs(gx), np.abs(gy)
    horizontal = ay <= ax * TAN_22_5
    vertical = ay * TAN_22_5 > ax
    same_sign = (gx ^ gy) >= 0
    keep = np.where(horizontal, (magnitude > at(0, -1)) & (magnitude >= at(0, 1)), False)
    keep |= vertical & (magnitude > at(-1, 0)) & (magnitude >= at(1, 0))
    diagonal = ~horizontal & ~vertical
    keep |= diagonal & same_sign & (magnitude > at(-1, -1)) & (magnitude >= at(1, 1))
    keep |= diagonal & ~same_sign & (magnitude > at(-1, 1)) & (magnitude >= at(1, -1))
    return keep


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    # Grow the strong edges through 8-connected weak pixels until nothing changes.
    edges = strong.copy()
    while True:
        p = np.pad(edges, 1)
        h, w = edges.shape
        grown = np.zeros_like(edges)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        grown &= weak
        if (grown == edges).all():
            return edges
        edges = grown | edges


def canny(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> Image.Image:
    """White edges on black, RGB, the image's size."""
    pixels = np.asarray(image.convert("RGB"))
    gx, gy, magnitude = _gradients(pixels)
    local_max = _thin(gx, gy, magnitude)
    edges = _hysteresis(local_max & (magnitude > high), local_max & (magnitude > low))
    return Image.fromarray(np.repeat((edges * 255).astype(np.uint8)[..., None], 3, axis=-1))


# module -> the annotator, given an image and the module's two thresholds (A1111's threshold_a and _b), if any
ANNOTATORS: dict[str, Callable[[Image.Image, tuple[float, float] | None], Image.Image]] = {
    "none": lambda image, thresholds: image,
    "canny": lambda image, thresholds: canny(image, *(thresholds or (CANNY_LOW, CANNY_HIGH))),
}
# Modules that run a network, by their A1111 names: offered where the network is given (Annotators).
DEPTH_MODULES = ("depth", "depth_midas")
ESTIMATORS = "a converted one (sdcpu convert Intel/dpt-hybrid-midas DIR) or a converted SD 2 depth model"
NEEDS_ESTIMATOR = f"the depth module needs a depth estimator: give --depth-estimator DIR, {ESTIMATORS}"


def annotate(module: str, image: Image.Image, thresholds: tuple[float, float] | None = None) -> Image.Image:
    """The control image `module` makes of `image`; SdcpuError naming the modules for an unknown one."""
    return Annotators()(module, image, thresholds)


class Annotators:
    """The modules a pipeline offers: those above, and the depth modules where it was given a depth estimator
    (runtime/controlnet/depth.py), which makes an image's depth map."""

    def __init__(self, depth: Callable[[Image.Image], Image.Image] | None = None):
        self.depth = depth

    def names(self) -> list[str]:
        return list(ANNOTATORS) + (list(DEPTH_MODULES) if self.depth is not None else [])

    def __call__(self, module: str, image: Image.Image, thresholds: tuple[float, float] | None = None) -> Image.Image:
        if module in DEPTH_MODULES:
            if self.depth is None:
                raise SdcpuError(NEEDS_ESTIMATOR)
            return self.depth(image)
        if module not in ANNOTATORS:
            raise SdcpuError(f"unknown ControlNet module {module!r}; choose one of: {', '.join(self.names())}")
        return ANNOTATORS[module](image, thresholds)
