"""What a task is: one kind of generation (txt2img, img2img, inpainting, ...) as one object the shared
denoising loop (`Pipeline.generate`, runtime/pipelines/base.py) is given.

A task is a frozen dataclass holding its own inputs and settings (an init image, a mask, ...). Its class
says which models can run it and what it needs (`Task`); its `start` makes the loop's initial latents
and returns what it adds to the loop, a `Conditioning`, whose hooks are called at numbered steps of
`Pipeline.generate`. Tasks are registered by name in tasks/__init__.py; the name of the one a model was
made for is its manifest's `task`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.components.unet import GuidedInput
from sdcpu.runtime.engines import Model
from sdcpu.runtime.schedulers import Scheduler
from sdcpu.runtime.settings import GenerationSettings


class Conditioning:
    """The loop's hooks; this base changes nothing (txt2img, img2img)."""

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        """Step 4: the scaled latents (N, C, h, w), with any extra input channels the UNet takes appended."""
        return sample

    def unet_inputs(self) -> dict[str, GuidedInput]:
        """Step 3: extra named UNet inputs, one row per image in each guidance half."""
        return {}

    def predict(self, unet: Callable[[np.ndarray], np.ndarray], sample: np.ndarray) -> np.ndarray:
        """Step 4: the guided prediction for the UNet input `sample` (whole, or tile by tile)."""
        return unet(sample)

    def after_step(self, latents: np.ndarray, index: int) -> np.ndarray:
        """Step 4: the latents after the `index`-th scheduler step (from 0) of this run."""
        return latents

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """Step 5: the decoded images (N, H, W, 3) in [0, 1]."""
        return pixels


PLAIN = Conditioning()


class TaskContext(Protocol):
    """What a task may ask of the pipeline that runs it."""

    folder: Path
    manifest: Manifest
    task_files: object  # what the model's own task read from the folder at load (Task.read_folder)

    def component(self, name: str) -> Model:
        """The network `name` (vae_encoder, depth_estimator), loaded on first use."""
        ...

    def free(self, model: Model) -> None:
        """After a network's phase: free it as the memory policy says."""
        ...

    def encode_pixels(self, pixels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Pixels (1, 3, H, W) in [-1, 1] -> scaled latents sampled from q(z|x), one row per image."""
        ...


@dataclass(frozen=True)
class StartInputs:
    """What every task's start is given: the checked settings, the scheduler with its timesteps set, the
    generator, and `noise()`, which draws the initial noise from it (or takes the latents passed in)."""

    settings: GenerationSettings
    scheduler: Scheduler
    rng: np.random.Generator
    noise: Callable[[], np.ndarray]


@dataclass(frozen=True)
class Start:
    latents: np.ndarray  # z at the first step run
    first: int  # the index into the scheduler's timesteps of the first step run
    conditioning: Conditioning = PLAIN


class Task:
    """A kind of generation. Subclasses are frozen dataclasses of their inputs, and set:
    `name` (the registry key; a model made for this task has it as manifest `task`), `runs_on` (the
    manifest tasks whose models can run it), `command` (how a person runs it, for errors)."""

    name: ClassVar[str]
    runs_on: ClassVar[tuple[str, ...]]
    command: ClassVar[str]

    @classmethod
    def read_folder(cls, folder: Path) -> object:
        """At load, once, for a model made for this task: what the task reads from the folder beyond the
        networks (the upscaler's low_res_scheduler); SdcpuError when it is damaged, so a bad folder fails
        at once. The pipeline keeps it as `task_files`."""
        return None

    def image(self) -> Image.Image | None:
        """The image given, whose size is the default output size."""
        return None

    def default_size(self, manifest: Manifest) -> tuple[int, int]:
        """Width and height when not given: the given image's, cut to the VAE's multiple; else the model's."""
        image = self.image()
        if image is None:
            return manifest.sample_size, manifest.sample_size
        f = manifest.vae_scale_factor
        return max(f, image.width // f * f), max(f, image.height // f * f)

    def record(self, manifest: Manifest) -> dict[str, Any]:
        """The GenerationSettings fields this task sets (strength, mask, ...), checked."""
        return {}

    def components(self) -> tuple[str, ...]:
        """The networks it needs beyond the family's text encoders, the UNet and the decoder."""
        return ()

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        """Step 3: the initial latents, the first step, and what the task adds to the loop."""
        raise NotImplementedError


def strength_start(scheduler: Scheduler, s: GenerationSettings) -> int:
    """SDEdit (Meng et al., https://arxiv.org/abs/2108.01073), as diffusers: run the last
    int(steps * strength) steps of the schedule; the index of the first, set as the scheduler's start."""
    assert s.strength is not None
    kept = min(int(s.steps * s.strength), s.steps)
    if kept == 0:
        raise SdcpuError(f"strength {s.strength} with {s.steps} steps leaves no step to run; raise either")
    first = (s.steps - kept) * scheduler.order
    scheduler.set_begin_index(first)
    return first
