"""txt2img: denoise from pure noise, z_T ~ N(0, sigma_init^2 I) (Rombach et al.,
https://arxiv.org/abs/2112.10752)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdcpu.runtime.tasks.base import Start, StartInputs, Task, TaskContext


@dataclass(frozen=True)
class TextToImage(Task):
    name = "text-to-image"
    runs_on = ("text-to-image",)
    command = "`sdcpu generate` (Pipeline.__call__)"

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        return Start(given.noise() * np.float32(given.scheduler.init_noise_sigma), 0)
