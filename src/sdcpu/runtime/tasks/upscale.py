"""The x4 upscaler (diffusers' StableDiffusionUpscalePipeline; the "x4-upscaling" latent diffusion model
of Stable Diffusion 2).

Its latents have the low-res image's own size; a VAE with 4x upsampling decodes them to 4x the pixels.
The UNet sees the low-res image as 3 more input channels, noised by the forward process of its own
`low_res_scheduler` to `noise_level` (noise augmentation, Ho et al., https://arxiv.org/abs/2106.15282,
sec. 4.1), and that noise level as its class label; it predicts v (v-prediction).

Large images are denoised in overlapping latent tiles whose predictions are blended at every step
(runtime/components/tiling.py `denoise_tiled`); the VAE then decodes in tiles too (runtime/memory.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.components.tiling import denoise_tiled
from sdcpu.runtime.components.unet import GuidedInput
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.schedulers import Scheduler, SchedulerConfig
from sdcpu.runtime.schedulers.common import alphas_cumprod
from sdcpu.runtime.settings import SCALE, GenerationSettings, UpscaleSettings
from sdcpu.runtime.tasks.base import Conditioning, Start, StartInputs, Task, TaskContext


class LowResImage(Conditioning):
    """[scaled z_t, noised low-res image] along channels; the noise level as `class_labels`."""

    def __init__(self, image: np.ndarray, noise_level: int, tile: int, overlap: int):
        self.image, self.noise_level = image.astype(np.float32), noise_level
        self.tile, self.overlap = tile, overlap

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        return np.concatenate([sample, self.image], axis=1)

    def unet_inputs(self) -> dict[str, GuidedInput]:
        return {"class_labels": GuidedInput.same(np.full(len(self.image), self.noise_level, dtype=np.int64))}

    def predict(self, unet: Callable[[np.ndarray], np.ndarray], sample: np.ndarray) -> np.ndarray:
        return denoise_tiled(unet, sample, self.tile, self.overlap)


def input_size(image: Image.Image) -> tuple[int, int]:
    """The low-res size the upscaler runs at: the image's, down to a multiple of 8 (the UNet halves it
    three times)."""
    width, height = image.width // 8 * 8, image.height // 8 * 8
    if not width or not height:
        raise SdcpuError(f"the image is {image.width}x{image.height}; the upscaler needs at least 8x8 pixels")
    return width, height


def upscale_start(
    pixels: np.ndarray,
    s: GenerationSettings,
    scheduler: Scheduler,
    low_res: SchedulerConfig,
    noise: Callable[[], np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, Conditioning]:
    """The initial latents and the low-res conditioning, drawing (as diffusers does) the low-res image's
    noise first, then the latents' noise. `pixels`: (1, 3, h, w) in [-1, 1]."""
    assert s.upscale is not None
    level = s.upscale.noise_level
    alpha_bar = alphas_cumprod(low_res)[level]
    augment = rng.standard_normal(pixels.shape, dtype=np.float32)
    noised = np.sqrt(alpha_bar) * pixels + np.sqrt(1 - alpha_bar) * augment  # q(x_t | x_0) at t = noise_level
    noised = np.repeat(noised, s.num_images, axis=0)
    cond = LowResImage(noised, level, s.upscale.tile, s.upscale.tile_overlap)
    return noise() * np.float32(scheduler.init_noise_sigma), cond


@dataclass(frozen=True)
class Upscale(Task):
    """Upscale `low_res` 4x, as `settings` say (noise level, tiles)."""

    low_res: Image.Image
    settings: UpscaleSettings = field(default_factory=UpscaleSettings)

    name = "upscaling"
    runs_on = ("upscaling",)
    command = "`sdcpu upscale` (Pipeline.upscale)"

    @classmethod
    def read_folder(cls, folder: Path) -> SchedulerConfig:
        return low_res_scheduler(folder)

    def image(self) -> Image.Image:
        return self.low_res

    def default_size(self, manifest: Manifest) -> tuple[int, int]:
        width, height = input_size(self.low_res)
        return width * SCALE, height * SCALE

    def record(self, manifest: Manifest) -> dict[str, Any]:
        return {"upscale": self.settings.validate(int(manifest.extra.get("max_noise_level", 350)))}

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        s = given.settings
        low = imaging.image_to_array(self.low_res, s.width // SCALE, s.height // SCALE)
        low_res = pipe.task_files
        assert isinstance(low_res, SchedulerConfig)  # read at load: the upscale task runs on upscalers only
        x, cond = upscale_start(low, s, given.scheduler, low_res, given.noise, given.rng)
        return Start(x, 0, cond)


def low_res_scheduler(folder: Path) -> SchedulerConfig:
    """The upscaler's `low_res_scheduler`: the forward process that noises its input."""
    path = folder / "low_res_scheduler" / "scheduler_config.json"
    try:
        return SchedulerConfig.from_dict(read_json_object(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SdcpuError(f"cannot read the upscaler's {path} ({err}); convert the model again") from None
