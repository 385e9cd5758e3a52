"""Quality measurement: the demo world's oracle over held-out captions, and SSIM / PSNR between two
model folders run with the same seeds (fp32 vs int8, OpenVINO vs ONNX, one scheduler vs another)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sdcpu.demo import world as world


@dataclass
class EvalReport:
    count: int = 0
    correct: dict[str, int] = field(default_factory=lambda: {a: 0 for a in (*world.ATTRIBUTES, "all")})
    ssim: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)

    def accuracy(self) -> dict[str, float]:
        return {a: n / max(1, self.count) for a, n in self.correct.items()}

    def summary(self) -> dict[str, float]:
        out = {f"accuracy_{a}": v for a, v in self.accuracy().items()}
        if self.ssim:
            out |= {"ssim_mean": float(np.mean(self.ssim)), "psnr_mean_db": float(np.mean(self.psnr))}
        return out


def evaluate(
    generate: Callable[[str, int], np.ndarray],
    count: int = 240,
    reference: Callable[[str, int], np.ndarray] | None = None,
) -> EvalReport:
    """Score `generate(caption, seed) -> float image` on `count` held-out scenes spread evenly over the
    set (seed = the scene's index, so a smaller count is a subset of the full run); with `reference`,
    also compare each image with the reference's for the same caption and seed."""
    _, held_out = world.split_scenes()
    report = EvalReport()
    # The held-out list is ordered by shape, then colour: a prefix would be all circles.
    picks = sorted({int(i) for i in np.linspace(0, len(held_out) - 1, min(count, len(held_out))).round()})
    for i in picks:
        scene = held_out[i]
        caption = scene.caption(i)
        image = generate(caption, i)
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        for attribute, ok in world.score(scene, pixels).items():
            report.correct[attribute] += int(ok)
        report.count += 1
        if reference is not None:
            other = reference(caption, i)
            report.ssim.append(ssim(image, other))
            report.psnr.append(psnr(image, other))
    return report


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two float images in [0, 1]."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean structural similarity (Wang et al. 2004, eq. 13) of two float images in [0, 1],
    on luma, with a uniform window; C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 1."""
    weights = np.array([0.299, 0.587, 0.114])
    x, y = (np.asarray(img, dtype=np.float64) @ weights for img in (a, b))
    c1, c2 = 0.01**2, 0.03**2

    def blur(z: np.ndarray) -> np.ndarray:
        windows = np.lib.stride_tricks.sliding_window_view(z, (window, window))
        return windows.mean(axis=(-1, -2))

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
