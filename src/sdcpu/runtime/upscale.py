"""The x4 upscaler (diffusers' StableDiffusionUpscalePipeline; the "x4-upscaling" latent diffusion model
of Stable Diffusion 2).

Its latents have the low-res image's own size; a VAE with 4x upsampling decodes them to 4x the pixels.
The UNet sees the low-res image as 3 more input channels, noised by the forward process of its own
`low_res_scheduler` to `noise_level` (noise augmentation, Ho et al., https://arxiv.org/abs/2106.15282,
sec. 4.1), and that noise level as its class label; it predicts v (v-prediction).

Large images are denoised in overlapping latent tiles whose predictions are blended at every step
(runtime/tiling.py `denoise_tiled`); the VAE then decodes in tiles too (runtime/memory.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from sdcpu.runtime.conditioning import Conditioning
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.schedulers import Scheduler, SchedulerConfig
from sdcpu.runtime.schedulers.common import alphas_cumprod
from sdcpu.runtime.settings import GenerationSettings
from sdcpu.runtime.tiling import denoise_tiled

SCALE = 4  # output pixels per input pixel, per side


class LowResImage(Conditioning):
    """[scaled z_t, noised low-res image] along channels; the noise level as `class_labels`."""

    def __init__(self, image: np.ndarray, noise_level: int, tile: int, overlap: int):
        self.image, self.noise_level = image.astype(np.float32), noise_level
        self.tile, self.overlap = tile, overlap

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        return np.concatenate([sample, self.image], axis=1)

    def unet_inputs(self) -> dict[str, np.ndarray]:
        return {"class_labels": np.full(len(self.image), self.noise_level, dtype=np.int64)}

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
