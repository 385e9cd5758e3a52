"""Model families: which pipeline a UNet belongs to, read from its config, and the one sentence that says
a family is not supported (by `convert` and by `Pipeline.load` alike, before any work).

The family keys two registries: the export families (export/families/) and the runtime pipelines
(runtime/pipelines/). "other" is a UNet of Stable Diffusion 1.x/2.x's architecture with another text
width (the bundled demo model's 64).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sdcpu.errors import SdcpuError

NAMES = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "other": "Stable Diffusion 1.x/2.x-architecture",
}
CROSS_ATTENTION_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def family_of(unet_config: dict[str, Any]) -> str:
    """sd1 / sd2 / sdxl / other. SDXL's UNet takes the pooled text embedding and the size and crop as
    `added_cond_kwargs` (`addition_embed_type` "text_time"), whatever its text width (SSD-1B, Vega)."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    width = int(unet_config.get("cross_attention_dim") or 0)
    return CROSS_ATTENTION_WIDTHS.get(width, "other")


def unsupported_family(family: str, supported: Iterable[str], verb: str) -> SdcpuError:
    """The error for a family that a registry does not hold; `verb`: what cannot be done ("convert")."""
    name = NAMES.get(family, family)
    runs = sorted({NAMES.get(f, f) for f in supported if f != "other"})
    return SdcpuError(f"{name} models are not supported yet: sdcpu can {verb} {' and '.join(runs)} models only")
