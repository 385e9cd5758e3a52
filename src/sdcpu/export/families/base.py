"""What an export family is: the torch classes its networks load as, and one exporter per component
(`ExportSpec`: the module to trace, its example inputs, names and dynamic axes)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdcpu.export.calibration import TextInputs, clip_text_inputs


@dataclass(frozen=True)
class ExportSpec:
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]  # example inputs, in the order of `module.forward`
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    inner_outputs: tuple[str, ...] = ()  # traced and named as outputs, stored as inner tensors only
    int64_inputs: tuple[str, ...] = ()  # float inputs that OpenVINO IRs store as int64 (see the notes)


@dataclass(frozen=True)
class TorchClass:
    """A diffusers or transformers model class, imported when first used (`from_pretrained`)."""

    module: str
    name: str

    def from_pretrained(self, folder: Path, subfolder: str) -> Any:
        import torch

        cls = getattr(importlib.import_module(self.module), self.name)
        # float32 whatever the config says: transformers 5 loads in the config's dtype, and SDXL's text
        # encoders say float16, which would trace a float16 graph. diffusers loads float32 by default
        # (asking it explicitly costs a second copy of the weights while loading).
        dtype = {} if self.module == "diffusers" else {"dtype": torch.float32}
        return cls.from_pretrained(folder, subfolder=subfolder, **dtype).eval()


# Optional kinds are exported only when the source has them (a depth2img folder's depth_estimator) or the
# convert is given them (--tiny-vae).
OPTIONAL_KINDS = frozenset({"tiny_vae", "depth_estimator"})


@dataclass(frozen=True)
class ExportFamily:
    """`loaders`: the torch class of each model a diffusers folder holds, by its subfolder ("kind").
    `components`: component -> (the kind it is cut from, its exporter), in export order, grouped by
    kind so that one torch model is in memory at a time (the VAE serves two components)."""

    loaders: Mapping[str, TorchClass]
    components: Mapping[str, tuple[str, Callable[[Any], ExportSpec | None]]]
    tokenizers: tuple[str, ...] = ("tokenizer",)  # their folders, copied as they are (CLIP's files)
    pipeline_classes: Mapping[str, str] = field(default_factory=dict)  # task -> diffusers' pipeline class
    safety_checker: bool = True  # whether the pipeline class takes one (SD 1.x/2.x: named as absent)
    # int8-hybrid's calibration: (staged folder, tokenizer folders, image size) -> the UNet's text inputs
    calibration_text: Callable[[Path, dict[str, Path], int], TextInputs] = clip_text_inputs

    def model_index(self, task: str, scheduler_class: str) -> dict[str, Any]:
        """diffusers' model_index.json for this family's pipeline of `task`, without safety checker."""
        parts: dict[str, Any] = {"scheduler": ["diffusers", scheduler_class]}
        parts |= {kind: [cls.module, cls.name] for kind, cls in self.loaders.items()}
        parts |= {name: ["transformers", "CLIPTokenizer"] for name in self.tokenizers}
        index = {"_class_name": self.pipeline_classes[task], **dict(sorted(parts.items()))}
        if not self.safety_checker:
            return index
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
        return index | ({"requires_safety_checker": False} if task != "upscaling" else {})
