"""Inpainting: repaint the masked part of an image (white in the mask), keep the rest.

Every model can inpaint, in one of two ways, as diffusers' StableDiffusionInpaintPipeline does:

- A 9-channel UNet (the SD inpainting models, task "inpainting") was trained to take the mask and the
  latents of the masked image as 5 more input channels: [z_t, m, E(x * (1 - m))] (Rombach et al.,
  https://arxiv.org/abs/2112.10752, sec. 4.5). `MaskedImageChannels` appends them.
- An ordinary 4-channel UNet inpaints by latent blending: after every step the latents outside the mask
  are replaced by the original's, noised to the next step's timestep,
  z <- (1 - m) * q(z_t' | z_0) + m * z (RePaint's known-region update, Lugmayr et al.,
  https://arxiv.org/abs/2201.09865, eq. 8, without its resampling). `LatentBlend` does it.

The mask is binarised (>= 0.5 repaints) at the image's size and taken at every f-th pixel in latent
space, as diffusers does. Decoding changes every pixel a little, so by default the original's pixels are
pasted back outside the mask through its blurred edge (as A1111 does): they stay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.schedulers import Scheduler
from sdcpu.runtime.settings import GenerationSettings, MaskSettings
from sdcpu.runtime.tasks.base import Conditioning, Start, StartInputs, Task, TaskContext, strength_start

Encode = Callable[[np.ndarray], np.ndarray]  # pixels (1, 3, H, W) in [-1, 1] -> scaled latents, one row per image


@dataclass(frozen=True)
class Mask:
    pixels: np.ndarray  # (1, 1, H, W) float32, 1 = repaint, 0 = keep
    soft: np.ndarray  # (H, W, 1) float32 in [0, 1]: the blurred mask the result is pasted through

    def latent(self, factor: int, n: int) -> np.ndarray:
        """The mask at latent resolution (nearest: every `factor`-th pixel), one row per image."""
        return np.repeat(self.pixels[:, :, ::factor, ::factor], n, axis=0)


def prepare_mask(mask: Image.Image, image: Image.Image, width: int, height: int, settings: MaskSettings) -> Mask:
    """The mask for an image of `image`'s size, grown by `settings.padding`, resized to width x height
    (Lanczos, as the image), binarised; raises SdcpuError when the sizes differ or nothing is masked."""
    if mask.size != image.size:
        raise SdcpuError(
            f"the mask is {mask.width}x{mask.height} and the image {image.width}x{image.height}; "
            "give a mask of the image's size (white where it should change, black where it stays)"
        )
    grey = mask.convert("L")
    if settings.padding:
        grey = grey.point(lambda v: 255 if v >= 128 else 0).filter(ImageFilter.MaxFilter(2 * settings.padding + 1))
    resized = np.asarray(grey.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32) / 255
    binary = (resized >= 0.5).astype(np.float32)
    if not binary.any():
        raise SdcpuError("the mask is empty (all black at this size); paint white where the image should change")
    soft = binary
    if settings.blur:
        edge = Image.fromarray((binary * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(settings.blur))
        soft = np.maximum(binary, np.asarray(edge, dtype=np.float32) / 255)  # the mask itself stays fully repainted
    return Mask(binary[None, None], soft[..., None])


class Overlay:
    """Pastes the original (N, H, W, 3 in [0, 1]) back outside the soft mask."""

    def __init__(self, original: np.ndarray, mask: Mask):
        self.original, self.soft = original, mask.soft

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return (self.original * (1 - self.soft) + pixels * self.soft).astype(np.float32)


class MaskedImageChannels(Conditioning):
    """For 9-channel UNets: [scaled z_t, m, masked-image latents] along channels."""

    def __init__(self, mask: np.ndarray, masked_latents: np.ndarray, overlay: Overlay | None):
        self.extra = np.concatenate([mask, masked_latents], axis=1).astype(np.float32)
        self.overlay = overlay

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        return np.concatenate([sample, self.extra], axis=1)

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        return self.overlay(pixels) if self.overlay is not None else pixels


class LatentBlend(Conditioning):
    """For 4-channel UNets: the known latents, noised to the next timestep, replace z outside the mask.
    `add_noise(z0, noise, index)`: the scheduler's forward process to its `index`-th timestep."""

    def __init__(
        self,
        mask: np.ndarray,
        image_latents: np.ndarray,
        noise: np.ndarray,
        add_noise: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
        first: int,
        steps: int,
        overlay: Overlay | None,
    ):
        self.mask, self.image_latents, self.noise, self.add_noise = mask, image_latents, noise, add_noise
        self.first, self.steps, self.overlay = first, steps, overlay

    def after_step(self, latents: np.ndarray, index: int) -> np.ndarray:
        known = self.image_latents
        if index < self.steps - 1:  # after the last step the known latents are the clean ones
            known = self.add_noise(self.image_latents, self.noise, self.first + index + 1)
        return ((1 - self.mask) * known + self.mask * latents).astype(np.float32)

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        return self.overlay(pixels) if self.overlay is not None else pixels


def _overlay(pixels: np.ndarray, mask: Mask, s: GenerationSettings) -> Overlay | None:
    return Overlay(imaging.decoded_to_float(pixels), mask) if s.mask is not None and s.mask.keep_unmasked else None


def inpaint_start(
    pixels: np.ndarray,
    mask: Mask,
    s: GenerationSettings,
    scheduler: Scheduler,
    start: int,
    noise: Callable[[], np.ndarray],
    encode: Encode,
) -> tuple[np.ndarray, Conditioning]:
    """A 9-channel UNet's initial latents and conditioning, drawing from the generator in diffusers' order:
    the image's latents (only when strength < 1), the noise, the masked image's latents."""
    full = s.strength is None or s.strength >= 1.0  # as diffusers: at full strength the start is pure noise
    known = None if full else encode(pixels)
    z = noise()
    x = z * np.float32(scheduler.init_noise_sigma) if known is None else scheduler.add_noise(known, z, start)
    masked = encode(pixels * (1 - mask.pixels))
    return x, MaskedImageChannels(mask.latent(_factor(pixels, z), len(z)), masked, _overlay(pixels, mask, s))


def blend_start(
    pixels: np.ndarray,
    mask: Mask,
    s: GenerationSettings,
    scheduler: Scheduler,
    start: int,
    noise: Callable[[], np.ndarray],
    encode: Encode,
) -> tuple[np.ndarray, Conditioning]:
    """A 4-channel UNet's initial latents and latent blending, drawing the image's latents, then the noise."""
    known = encode(pixels)
    z = noise()
    full = s.strength is None or s.strength >= 1.0
    x = z * np.float32(scheduler.init_noise_sigma) if full else scheduler.add_noise(known, z, start)
    steps, overlay = len(scheduler.timesteps) - start, _overlay(pixels, mask, s)
    return x, LatentBlend(mask.latent(_factor(pixels, z), len(z)), known, z, scheduler.add_noise, start, steps, overlay)


def _factor(pixels: np.ndarray, latents: np.ndarray) -> int:
    return pixels.shape[-1] // latents.shape[-1]  # the VAE's downsampling factor


@dataclass(frozen=True)
class Inpaint(Task):
    """Repaint the white part of `mask` in `init_image` (one size); `strength` < 1 starts from the image,
    noised. A model made for inpainting takes the mask as channels; any other blends latents."""

    init_image: Image.Image
    mask: Image.Image
    strength: float = 1.0
    mask_settings: MaskSettings = field(default_factory=MaskSettings)

    name = "inpainting"
    runs_on = ("text-to-image", "inpainting")
    command = "`sdcpu inpaint` (Pipeline.inpaint)"

    def image(self) -> Image.Image:
        return self.init_image

    def record(self, manifest: Manifest) -> dict[str, Any]:
        return {"strength": self.strength, "mask": self.mask_settings.validate()}

    def components(self) -> tuple[str, ...]:
        return ("vae_encoder",)

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        s, scheduler, rng = given.settings, given.scheduler, given.rng
        assert s.mask is not None
        first = strength_start(scheduler, s)
        pixels = imaging.image_to_array(self.init_image, s.width, s.height)
        mask = prepare_mask(self.mask, self.init_image, s.width, s.height, s.mask)
        encode = lambda p: pipe.encode_pixels(p, s.num_images, rng)  # noqa: E731
        # A 4-channel UNet inpaints by latent blending; a 9-channel one takes the mask as input channels.
        start_latents = inpaint_start if pipe.manifest.task == "inpainting" else blend_start
        x, cond = start_latents(pixels, mask, s, scheduler, first, given.noise, encode)
        return Start(x, first, cond)
