"""The edit modes' entry points (inpaint, upscale, depth2img), on every Pipeline: each opens its images, builds the
settings and hands them to the shared loop, `Pipeline.generate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from sdcpu.runtime import images as imaging
from sdcpu.runtime.depth import load_depth_map
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.result import Callback, PipelineResult
from sdcpu.runtime.settings import GenerationSettings, MaskSettings, UpscaleSettings
from sdcpu.runtime.upscale import SCALE, input_size

# What each kind of model can do (manifest_schema.TASKS): txt2img models also inpaint, by latent blending.
MODES = {"text-to-image": ("text-to-image", "inpainting"), "inpainting": ("inpainting",), "upscaling": ("upscaling",)}
MODES["depth-to-image"] = ("depth-to-image",)
COMMANDS = {"inpainting": "`sdcpu inpaint` (Pipeline.inpaint)", "upscaling": "`sdcpu upscale` (Pipeline.upscale)"}
COMMANDS["depth-to-image"] = "`sdcpu depth2img` (Pipeline.depth2img)"


def check_mode(task: str, mode: str) -> None:
    """Raise SdcpuError, naming the command to use, when a model trained for `task` cannot run `mode`."""
    if mode not in MODES.get(task, ()):
        runs = f"run it with {COMMANDS[task]}" if task in COMMANDS else "this sdcpu cannot run it"
        raise SdcpuError(f"this model folder holds a model for {task}; {runs}")


class _Runs(Protocol):
    def settings(self, prompt: str, image: Image.Image | None = None, **options: Any) -> GenerationSettings: ...

    def generate(
        self,
        s: GenerationSettings,
        image: Image.Image | None = None,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        mask: Image.Image | None = None,
        depth_map: np.ndarray | None = None,
    ) -> PipelineResult: ...


class EditModes:
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
        9-channel inpainting models and ordinary ones both work (runtime/inpaint.py)."""
        init = imaging.open_init_image(image)
        mask_image = imaging.open_init_image(mask, "mask")
        given, mask_settings = latents is not None, mask_settings or MaskSettings()
        settings = self.settings(prompt, init, strength=strength, mask=mask_settings, given=given, **options)
        return self.generate(settings, init, latents, callback, mask_image)

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
        """Upscale `image` 4x with an x4 upscaler model (runtime/upscale.py), described by `prompt`;
        `noise_level` lets it invent more detail; `tile`: the largest latent square denoised at once (input
        pixels); `options` as for `__call__` (steps, seed, ...)."""
        low = imaging.open_init_image(image)
        width, height = input_size(low)
        up = UpscaleSettings(noise_level, tile, tile_overlap)
        given = latents is not None
        size = dict(width=width * SCALE, height=height * SCALE)
        settings = self.settings(prompt, low, guidance=guidance, upscale=up, given=given, **size, **options)
        return self.generate(settings, low, latents, callback)

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
        """Redraw `image` to match `prompt` keeping its depth (runtime/depth.py): estimated by the model's
        DPT, or `depth_map` (a .npy, a 16-bit PNG or an array, larger is nearer); `strength` as img2img's;
        `options` as for `__call__` (steps, seed, ...)."""
        init = imaging.open_init_image(image)
        given = load_depth_map(depth_map, init) if depth_map is not None else None
        kind = "given" if given is not None else "estimated"
        settings = self.settings(prompt, init, strength=strength, depth=kind, given=latents is not None, **options)
        return self.generate(settings, init, latents, callback, depth_map=given)
