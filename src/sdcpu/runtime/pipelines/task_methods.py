"""The pipeline's public entry points, one per task: each opens its images, builds its task
(runtime/tasks/) and hands it to `Pipeline.run`, which checks the settings and runs the shared loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.runtime.components.unet import UNetHook
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.lora import LoraSetting
from sdcpu.runtime.result import Callback, PipelineResult
from sdcpu.runtime.settings import MaskSettings, UpscaleSettings
from sdcpu.runtime.tasks import DepthToImage, ImageToImage, Inpaint, Task, TextToImage, Upscale
from sdcpu.runtime.tasks.depth2img import load_depth_map


class _Runs(Protocol):
    def run(
        self,
        task: Task,
        prompt: str,
        *,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        hooks: Sequence[UNetHook] = (),
        **options: Any,
    ) -> PipelineResult: ...


class TaskMethods:
    def __call__(
        self: _Runs,
        prompt: str,
        negative_prompt: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        init_image: str | Path | Image.Image | None = None,
        strength: float = 0.8,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        deep_cache: int = 1,
        watermark: bool = False,
        loras: Sequence[LoraSetting | tuple[str | Path, float]] = (),
        controls: Sequence[ControlSetting] = (),
    ) -> PipelineResult:
        """Generate images (txt2img, or img2img with `init_image`); see the README for each option. `steps`
        and `guidance` default to the model's (20 and 7.5; few-step models' schedulers imply fewer, unguided).
        `loras`: (file, scale) pairs, applied without reconverting (docs/lora.md). `controls`: ControlNets
        (`ControlSetting.of(folder, image, weight, start, end, mode, module)`, docs/controlnet.md)."""
        if not 0 < strength <= 1:  # checked with or without an init image: a bad value is never ignored
            raise SdcpuError(f"strength must be in (0, 1]; got {strength}")
        image = imaging.read_image(init_image) if init_image is not None else None
        task = ImageToImage(image, strength) if image is not None else TextToImage()
        options: dict[str, Any] = dict(
            negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, width=width
        )
        options |= dict(height=height, num_images=num_images, scheduler=scheduler, deep_cache=deep_cache, loras=loras)
        options["controls"] = controls
        return self.run(task, prompt, latents=latents, callback=callback, watermark=watermark, **options)

    def inpaint(
        self: _Runs,
        prompt: str,
        image: str | Path | Image.Image,
        mask: str | Path | Image.Image,
        *,
        strength: float = 1.0,
        mask_settings: MaskSettings | None = None,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> PipelineResult:
        """Repaint the white part of `mask` in `image` (paths or images of one size) to match `prompt`;
        `strength` < 1 starts from the image, noised; `options` as for `__call__` (steps, seed, ...).
        9-channel inpainting models and ordinary ones both work (runtime/tasks/inpaint.py)."""
        init, mask_image = imaging.read_image(image), imaging.read_image(mask, "mask")
        task = Inpaint(init, mask_image, strength, mask_settings or MaskSettings())
        return self.run(task, prompt, latents=latents, callback=callback, **options)

    def upscale(
        self: _Runs,
        image: str | Path | Image.Image,
        prompt: str = "",
        *,
        noise_level: int = 20,
        tile: int = 320,
        tile_overlap: int = 32,
        guidance: float = 9.0,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> PipelineResult:
        """Upscale `image` 4x with an x4 upscaler model (runtime/tasks/upscale.py), described by `prompt`;
        `noise_level` lets it invent more detail; `tile`: the largest latent square denoised at once (input
        pixels); `options` as for `__call__` (steps, seed, ...)."""
        task = Upscale(imaging.read_image(image), UpscaleSettings(noise_level, tile, tile_overlap))
        return self.run(task, prompt, latents=latents, callback=callback, guidance=guidance, **options)

    def depth2img(
        self: _Runs,
        prompt: str,
        image: str | Path | Image.Image,
        *,
        depth_map: str | Path | np.ndarray | None = None,
        strength: float = 0.8,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> PipelineResult:
        """Redraw `image` to match `prompt` keeping its depth (runtime/tasks/depth2img.py): estimated by the
        model's DPT, or `depth_map` (a .npy, a 16-bit PNG or an array, larger is nearer); `strength` as
        img2img's; `options` as for `__call__` (steps, seed, ...)."""
        init = imaging.read_image(image)
        given = load_depth_map(depth_map, init) if depth_map is not None else None
        return self.run(DepthToImage(init, strength, given), prompt, latents=latents, callback=callback, **options)
