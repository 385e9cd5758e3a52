"""A ControlNet as one generation asks for it (A1111's "unit"): the converted ControlNet folder, its
control image (after the annotator, if one is named), weight, the fraction of the steps it acts on, and
its control mode. Recorded in the PNG by name and hash, as A1111's `ControlNet 0` infotext."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.controlnet import ControlNetManifest
from sdcpu.runtime.controlnet.annotators import Annotators

MAX_WEIGHT = 2.0  # A1111's slider's end: beyond it the control burns the image
# A1111's control modes: "balanced" adds the residuals to both guidance halves; "prompt" ("My prompt is more
# important") scales them down level by level towards the inner blocks; "control" ("ControlNet is more
# important") does the same and adds them to the conditional half only, which is diffusers' guess mode.
CONTROL_MODES = ("balanced", "prompt", "control")


@dataclass(frozen=True)
class ControlSetting:
    folder: str
    weight: float
    start: float  # the first fraction of the steps it acts on, as diffusers' control_guidance_start
    end: float
    mode: str
    module: str  # the annotator applied to the given image ("none": the image is the control already)
    name: str  # the folder's name
    hash: str  # the first 8 hex digits of the sha256 of its files' hashes, as A1111's model hash in brackets
    image: Image.Image = field(compare=False, repr=False)  # RGB, at the size it was given

    @classmethod
    def of(
        cls,
        folder: str | Path,
        image: Image.Image,
        weight: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
        mode: str = "balanced",
        module: str = "none",
        thresholds: tuple[float, float] | None = None,
        annotators: Annotators | None = None,
    ) -> ControlSetting:
        """Check everything but the match with the model (Pipeline.settings does that); SdcpuError says
        what is wrong. The annotator `module` (runtime/controlnet/annotators.py) runs here, once, with its
        `thresholds` where it has them (canny's low and high; default 100 and 200); `annotators`: the
        pipeline's (`pipe.controlnets.annotators`), which offer depth where it was given an estimator."""
        path = Path(folder)
        manifest = ControlNetManifest.load(path)
        if not (math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT):
            raise SdcpuError(f"ControlNet {path.name}: the weight must be from 0 to {MAX_WEIGHT:g}; got {weight}")
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end <= 1):
            raise SdcpuError(
                f"ControlNet {path.name}: guidance start and end must satisfy 0 <= start < end <= 1; got {start}, {end}"
            )
        if mode not in CONTROL_MODES:
            raise SdcpuError(f"unknown control mode {mode!r}; choose one of: {', '.join(CONTROL_MODES)}")
        control = (annotators or Annotators())(module, image.convert("RGB"), thresholds)
        return cls(
            str(path),
            float(weight),
            float(start),
            float(end),
            mode,
            module,
            path.name,
            manifest.short_hash(),
            control,
        )

    def record(self) -> dict[str, Any]:
        """For the PNG: no path of this machine, no image."""
        fields = ("name", "hash", "weight", "start", "end", "mode", "module")
        return {name: getattr(self, name) for name in fields}
