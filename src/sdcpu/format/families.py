"""Model families: which pipeline a UNet belongs to, read from its config, and the one sentence that says
a family is not supported (by `convert` and by `Pipeline.load` alike, before any work).

The family keys two registries: the export families (export/families/) and the runtime pipelines
(runtime/pipelines/). "other" is a UNet of Stable Diffusion 1.x/2.x's architecture with another text
width (the bundled demo model's 64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sdcpu.errors import SdcpuError

NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "sdxl-refiner": "Stable Diffusion XL refiner",
    "other": "Stable Diffusion 1.x/2.x-architecture",
}
Config = dict[str, Any]
# family -> does a UNet config (and the folder's model_index.json, where there is one) belong to it? The
# first rule that holds names the family. SDXL's UNet takes the pooled text embedding and the size and
# crop as `added_cond_kwargs` (`addition_embed_type` "text_time"), whatever its text width (SSD-1B, Vega).
# The refiner also takes an aesthetic score, and OpenCLIP ViT-bigG's 1280-wide text alone.
FAMILY_RULES: dict[str, Callable[[Config, Config], bool]] = {
    "sdxl-refiner": lambda unet, index: (
        unet.get("addition_embed_type") == "text_time"
        and (bool(index.get("requires_aesthetics_score")) or unet.get("cross_attention_dim") == 1280)
    ),
    "sdxl": lambda unet, index: unet.get("addition_embed_type") == "text_time",
    "sd1": lambda unet, index: unet.get("cross_attention_dim") == 768,
    "sd2": lambda unet, index: unet.get("cross_attention_dim") == 1024,
}


def family_of(unet_config: Config, model_index: Config | None = None) -> str:
    """The family of a UNet config (sd1 / sd2 / sdxl), by FAMILY_RULES; "other" where none holds."""
    index = model_index or {}
    return next((family for family, rule in FAMILY_RULES.items() if rule(unet_config, index)), "other")


def unsupported_family(family: str, supported: Iterable[str], verb: str) -> SdcpuError:
    """The error for a family that a registry does not hold; `verb`: what cannot be done ("convert")."""
    name = NAMES.get(family, family)
    runs = sorted({NAMES.get(f, f) for f in supported if f != "other"})
    return SdcpuError(f"{name} models are not supported yet: sdcpu can {verb} {' and '.join(runs)} models only")
