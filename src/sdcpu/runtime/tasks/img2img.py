"""img2img (SDEdit, Meng et al., https://arxiv.org/abs/2108.01073): the encoded image, noised to the
timestep where the strength-truncated schedule starts, is denoised from there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdcpu.format.manifest import Manifest
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.tasks.base import Start, StartInputs, Task, TaskContext, strength_start


@dataclass(frozen=True)
class ImageToImage(Task):
    init_image: Image.Image
    strength: float = 0.8  # how much of the schedule runs: 1 repaints from noise

    name = "image-to-image"
    runs_on = ("text-to-image",)
    command = "`sdcpu generate --init-image` (Pipeline.__call__ with init_image)"

    def image(self) -> Image.Image:
        return self.init_image

    def record(self, manifest: Manifest) -> dict[str, Any]:
        return {"strength": self.strength}

    def components(self) -> tuple[str, ...]:
        return ("vae_encoder",)

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        return sdedit_start(pipe, given, self.init_image)


def sdedit_start(pipe: TaskContext, given: StartInputs, image: Image.Image) -> Start:
    """The encoded `image`, noised to the first timestep the strength leaves (img2img, depth2img)."""
    s, scheduler = given.settings, given.scheduler
    first = strength_start(scheduler, s)
    x0 = pipe.encode_pixels(imaging.image_to_array(image, s.width, s.height), s.num_images, given.rng)
    return Start(scheduler.add_noise(x0, given.noise(), first), first)
