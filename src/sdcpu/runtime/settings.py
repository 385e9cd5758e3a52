"""The settings of one generation, checked once and frozen; they also become the PNG metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from sdcpu.errors import SdcpuError
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.io.infotext import format_parameters
from sdcpu.runtime.io.outputs import MAX_IMAGES
from sdcpu.runtime.io.watermark import MIN_PIXELS
from sdcpu.runtime.lora.setting import LoraSetting
from sdcpu.runtime.schedulers import SCHEDULERS

MAX_GUIDANCE = 100.0  # far above any useful scale (7.5 is usual); beyond it images are saturated noise
# CLIP reads 77 tokens, a few hundred characters; 16 KiB leaves room for any prompt a person writes and keeps
# a pasted file (tokenized, then stored in every PNG) from costing gigabytes.
MAX_PROMPT_BYTES = 16 * 1024

SCALE = 4  # the x4 upscaler's output pixels per input pixel, per side
MAX_MASK_PIXELS = 256  # blur and padding, in pixels: more than any edit needs

MAX_SIDE = 16_384  # pixels: 8x SD 1.5's native size and 16x SDXL's area; the memory check refuses most before


@dataclass(frozen=True)
class MaskSettings:
    blur: int = 4  # the soft edge (Gaussian radius, pixels) through which the result is pasted over the original
    padding: int = 0  # grow the mask by this many pixels before repainting
    keep_unmasked: bool = True  # paste the original's pixels back outside the blurred mask

    def validate(self) -> MaskSettings:
        for name, value in (("mask blur", self.blur), ("mask padding", self.padding)):
            if not 0 <= value <= MAX_MASK_PIXELS:
                raise SdcpuError(f"{name} must be from 0 to {MAX_MASK_PIXELS} pixels; got {value}")
        return self


@dataclass(frozen=True)
class UpscaleSettings:
    noise_level: int = 20  # noise added to the low-res image (its class label): more lets the model invent more
    tile: int = 320  # the largest square of latents (input pixels) the UNet denoises at once
    tile_overlap: int = 32  # latents that neighbouring tiles share, blended

    def validate(self, max_noise_level: int) -> UpscaleSettings:
        if not 0 <= self.noise_level <= max_noise_level:
            raise SdcpuError(f"noise level must be from 0 to the model's {max_noise_level}; got {self.noise_level}")
        if self.tile < 16 or not 0 <= self.tile_overlap <= self.tile // 2:
            given = f"{self.tile}, {self.tile_overlap}"
            raise SdcpuError(f"tile must be at least 16 and tile overlap from 0 to half the tile; got {given}")
        return self


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    num_images: int
    scheduler: str
    strength: float | None  # None for txt2img
    model: str
    deep_cache: int = 1  # DeepCache: the whole UNet every N steps, a shallow pass between (1: every step)
    watermark: bool = False  # the invisible watermark of the reference scripts (runtime/io/watermark.py)
    noise: str = "seed"  # "seed": drawn from the seed; "given": passed in (latents=), not reproduced by the seed
    mask: MaskSettings | None = None  # inpainting's mask handling (None: not inpainting)
    upscale: UpscaleSettings | None = None  # the x4 upscaler's noise level and tiles (None: not upscaling)
    depth: str | None = None  # depth2img's depth map: "estimated" (by the DPT) or "given" (None: not depth2img)
    loras: tuple[LoraSetting, ...] = ()  # run-time LoRAs and their scales (runtime/lora/)
    controls: tuple[
        ControlSetting, ...
    ] = ()  # ControlNets, their images, weights and step ranges (runtime/controlnet/)

    def validate(self, multiple: int, max_steps: int = 1000) -> GenerationSettings:
        """Raise SdcpuError (with what to do) on any setting the pipeline cannot run; `max_steps`: the
        model's training timesteps, the most any scheduler can take distinct steps over."""
        _check_text("prompt", self.prompt)
        _check_text("negative prompt", self.negative_prompt)
        if self.width % multiple or self.height % multiple or self.width <= 0 or self.height <= 0:
            raise SdcpuError(
                f"width and height must be positive multiples of {multiple}; got {self.width}x{self.height}"
            )
        if not 1 <= self.steps < max_steps:
            raise SdcpuError(f"steps must be at least 1 and below the model's {max_steps} timesteps; got {self.steps}")
        if not 0 <= self.guidance <= MAX_GUIDANCE:  # NaN fails the comparison too
            raise SdcpuError(
                f"guidance must be a finite number from 0 to {MAX_GUIDANCE:g} (1 or less turns classifier-free "
                f"guidance off); got {self.guidance}"
            )
        if not 1 <= self.num_images <= MAX_IMAGES:
            raise SdcpuError(f"num_images must be from 1 to {MAX_IMAGES:,}; got {self.num_images}")
        if max(self.width, self.height) > MAX_SIDE:
            raise SdcpuError(f"width and height must be at most {MAX_SIDE:,} pixels; got {self.width}x{self.height}")
        if self.strength is not None and not 0 < self.strength <= 1:
            raise SdcpuError(f"strength must be in (0, 1]; got {self.strength}")
        if self.deep_cache < 1:
            raise SdcpuError(f"deep_cache must be at least 1 (1 runs the whole UNet every step); got {self.deep_cache}")
        if self.scheduler not in SCHEDULERS:
            raise SdcpuError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if self.watermark and self.width * self.height < MIN_PIXELS:
            raise SdcpuError(
                f"the watermark needs at least {MIN_PIXELS:,} pixels (256x256); got {self.width}x{self.height}"
            )
        if not 0 <= self.seed < 2**63:
            raise SdcpuError(f"seed must be a non-negative integer below 2**63; got {self.seed}")
        return self

    def png_metadata(self, index: int, runtime: dict[str, str] | None = None) -> dict[str, str]:
        """PNG text chunks: each setting, then how it ran (`runtime`: backend, device, compute precision),
        all of it as one JSON chunk "sdcpu", and A1111's "parameters" (runtime/io/infotext.py)."""
        from sdcpu.version import __version__

        runtime = runtime or {}
        given = asdict(replace(self, controls=())) | {"loras": [lora.record() for lora in self.loras]}
        given |= {"controls": [control.record() for control in self.controls]}  # no paths of this machine, no image
        given = {k: v for k, v in given.items() if not (k in ("loras", "controls") and not v)}
        data = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in given.items() if v is not None}
        data |= runtime
        data["image_index"] = str(index)
        data["sdcpu"] = json.dumps({**given, "image_index": index, "runtime": runtime})
        given = {**given, "image_index": index}
        model_hash = runtime.get("model_hash", "")
        data["parameters"] = format_parameters(given, self.model, model_hash, f"sdcpu {__version__}")
        return data


def _check_text(name: str, text: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that were not UTF-8, passed through as surrogates
        raise SdcpuError(f"the {name} is not valid UTF-8 text; check the terminal's or the file's encoding") from None
    if size > MAX_PROMPT_BYTES:
        raise SdcpuError(f"the {name} is {size:,} bytes, over the {MAX_PROMPT_BYTES:,}-byte limit; shorten it")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise SdcpuError(f"the {name} holds control characters; remove them")
