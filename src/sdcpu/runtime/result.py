"""What a generation returns: the images, their float pixels, the settings and how it ran."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.io.outputs import output_paths
from sdcpu.runtime.settings import GenerationSettings

Callback = Callable[[int, int, np.ndarray], bool | None]  # (steps done, steps, latents) -> False stops the loop


@dataclass(frozen=True)
class PipelineResult:
    images: list[Image.Image]
    array: np.ndarray  # (N, H, W, 3) float32 in [0, 1], before 8-bit rounding
    settings: GenerationSettings
    completed_steps: int
    runtime: dict[str, str] = field(default_factory=dict)  # how it ran: backend, device, compute precision

    def save(self, path: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the images as PNG with the settings in their text metadata (several: `stem-i.png`);
        an existing file is replaced only with `overwrite`. Returns the paths."""
        paths = output_paths(path, len(self.images), overwrite)
        for i, (image, target) in enumerate(zip(self.images, paths, strict=True)):
            imaging.save_png(image, target, self.settings.png_metadata(i, self.runtime))
        return paths
