"""The export families, keyed by `manifest.family` (format/families.py): which networks a family has and
how each is traced. A new family is a module here and an entry in `EXPORT_FAMILIES`."""

from __future__ import annotations

from sdcpu.export.families.base import OPTIONAL_KINDS, ExportFamily, ExportSpec
from sdcpu.export.families.sd import STABLE_DIFFUSION
from sdcpu.export.families.sdxl import STABLE_DIFFUSION_XL
from sdcpu.format.families import unsupported_family

__all__ = ["EXPORT_FAMILIES", "OPTIONAL_KINDS", "ExportFamily", "ExportSpec", "export_family"]

EXPORT_FAMILIES: dict[str, ExportFamily] = {
    "sd1": STABLE_DIFFUSION,
    "sd2": STABLE_DIFFUSION,
    "other": STABLE_DIFFUSION,
    "sdxl": STABLE_DIFFUSION_XL,
}


def export_family(family: str) -> ExportFamily:
    """The family's exporters; SdcpuError, in one sentence, for a family sdcpu cannot convert."""
    if family not in EXPORT_FAMILIES:
        raise unsupported_family(family, EXPORT_FAMILIES, "convert") from None
    return EXPORT_FAMILIES[family]
