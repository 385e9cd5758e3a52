"""ControlNet's residuals for every UNet call (a UNetHook, components/unet.py), as diffusers'
StableDiffusionControlNetPipeline computes them, for one or several ControlNets:

- At loop step i of n, a ControlNet acts when start <= i / n and (i + 1) / n <= end; otherwise its
  residuals are zero (diffusers' `controlnet_keep`), and it is not run at all.
- It reads the scaled latents (the UNet's first channels: an inpainting UNet's extra ones are not its),
  the timestep, the text embeddings (and SDXL's pooled text and ids) and the control image, in [0, 1].
- Its residuals are multiplied by its weight, and in the "prompt" and "control" modes also by
  logspace(-1, 0, N + 1): 0.1 for the outermost skip up to 1 for the middle block (diffusers' guess mode;
  A1111's 0.825 ** (12 - i) differs by under 1%). In "control" mode, and for a ControlNet whose
  residuals are pooled over the image, they go to the conditional half of a guided batch only.
- Several ControlNets' residuals are summed (diffusers' MultiControlNetModel).

Two savings, both within float rounding: on both halves of a guided batch, the sample, timestep and
control image are given `Repeated`, so that what depends on them alone is computed once
(engines/passes/shared_rows.py); and where the networks compute in bf16 or f16 the residuals come and go
as float16 (residuals.add_residual_inputs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.controlnet import ControlNetManifest
from sdcpu.runtime.components.unet import HookCall
from sdcpu.runtime.controlnet.residuals import MID_NAME, down_name
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.engines import Input, Model, Repeated

TEXT_INPUTS = ("encoder_hidden_states", "text_embeds", "time_ids")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet as it runs: its network, manifest, setting, and its control image at the output size."""

    model: Model
    manifest: ControlNetManifest
    setting: ControlSetting
    image: np.ndarray  # (1, 3, H, W) float32 in [0, 1]

    def acts_at(self, step: int, steps: int) -> bool:
        return not (step / steps < self.setting.start or (step + 1) / steps > self.setting.end)

    def scales(self) -> np.ndarray:
        """The factor of each residual (the middle block's last)."""
        n = len(self.manifest.residual_channels)
        soft = self.setting.mode != "balanced" and not self.manifest.global_pool_conditions
        levels = np.logspace(-1, 0, n) if soft else np.ones(n)
        return (levels * self.setting.weight).astype(np.float32)

    def conditional_only(self) -> bool:
        return self.setting.mode == "control" or self.manifest.global_pool_conditions


ASPECT_TOLERANCE = 0.02  # rounding to the VAE's multiple: a 1000x750 image for a 1000x752 output is the same aspect


def check_aspect(setting: ControlSetting, width: int, height: int) -> None:
    """SdcpuError for a control image of another aspect than the output: stretched, its edges would steer
    the image to the wrong places (crop it to the output's aspect first)."""
    w, h = setting.image.size
    if abs(w * height - h * width) > ASPECT_TOLERANCE * h * width:
        raise SdcpuError(
            f"the control image of ControlNet {setting.name} is {w}x{h}, another aspect than the {width}x{height} "
            "image asked for; crop it to that aspect, or ask for a size of its aspect"
        )


def control_image(image: Image.Image, width: int, height: int) -> np.ndarray:
    """diffusers' control image: RGB resized to the output size (Lanczos), in [0, 1], (1, 3, H, W)."""
    resized = image.convert("RGB").resize((width, height), resample=Image.Resampling.LANCZOS)
    return (np.asarray(resized, dtype=np.float32) / np.float32(255)).transpose(2, 0, 1)[None].copy()


class ControlNetHook:
    """The summed residuals of `units` for each UNet call; zeros where none acts (or there is none: a UNet
    given residual inputs for an earlier generation must still be fed them). `levels`: each residual's
    (width, times halved), from the ControlNet manifests; `dtype`: the residuals' (float16 where they are
    handed over in half precision, see residuals.add_residual_inputs)."""

    def __init__(
        self, units: Sequence[ControlUnit], levels: Sequence[tuple[int, int]], dtype: type[np.floating] = np.float32
    ):
        self.units, self.levels, self.dtype = tuple(units), tuple(levels), dtype

    def __call__(
        self, sample: np.ndarray, t: float, inputs: Mapping[str, np.ndarray], call: HookCall
    ) -> dict[str, np.ndarray]:
        total: list[np.ndarray] | None = None
        for unit in self.units:
            if not unit.acts_at(call.step, call.steps):
                continue
            residuals = self._residuals(unit, sample, t, inputs, call)
            total = residuals if total is None else [a + b for a, b in zip(total, residuals, strict=True)]
        if total is None:
            total = self._zeros(sample)
        names = [down_name(i) for i in range(len(total) - 1)] + [MID_NAME]
        return dict(zip(names, total, strict=True))

    def _residuals(
        self, unit: ControlUnit, sample: np.ndarray, t: float, inputs: Mapping[str, np.ndarray], call: HookCall
    ) -> list[np.ndarray]:
        rows = ~call.negative if unit.conditional_only() else np.ones(len(sample), dtype=bool)
        if not rows.any():
            return self._zeros(sample)
        channels, n = int(unit.manifest.inputs["sample"]["shape"][1]), int(rows.sum())
        # Both halves of a guided batch: the sample, timestep and control image are the same rows twice.
        half = n // 2 if call.repeated and rows.all() else 0
        same: dict[str, np.ndarray] = {
            "sample": np.ascontiguousarray(sample[rows, :channels][half:]),
            "timestep": np.full(n - half, t, np.float32),
            "controlnet_cond": np.repeat(unit.image, n - half, axis=0),
        }
        feed: dict[str, Input] = {name: Repeated(v) if half else v for name, v in same.items()}
        feed |= {name: inputs[name][rows] for name in TEXT_INPUTS if name in unit.manifest.inputs}
        outputs = unit.model.outputs(**feed)
        out = []
        for residual, scale in zip(outputs, unit.scales(), strict=True):
            residual *= scale  # in place: the engine's outputs are copies of their own
            if rows.all():
                out.append(residual)
                continue
            full = np.zeros((len(sample), *residual.shape[1:]), residual.dtype)
            full[rows] = residual
            out.append(full)
        return out

    def _zeros(self, sample: np.ndarray) -> list[np.ndarray]:
        # The residuals' shapes: each level halves the latents' size (rounding up, as the stride-2 convolutions do).
        h, w = sample.shape[-2:]
        shapes = [(len(sample), channels, -(-h // 2**level), -(-w // 2**level)) for channels, level in self.levels]
        return [np.zeros(shape, self.dtype) for shape in shapes]
