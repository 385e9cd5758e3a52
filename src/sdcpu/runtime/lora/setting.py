"""A LoRA as one generation asks for it: a file and its scale, recorded in the PNG by name and hash."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.safetensors import check_safetensors

MAX_SCALE = 100.0  # far beyond any useful strength (LoRAs are made for about 0 to 1.5)
# ONNX Runtime cannot take them: a session cannot be given new inputs without editing the graph with the
# onnx package (not a runtime dependency) and building the whole session again for each set of layers.
NEEDS_OPENVINO = (
    "LoRAs at run time need the OpenVINO backend (--backend openvino); for ONNX Runtime, fuse the LoRA into "
    "the model when converting it: sdcpu convert --lora FILE --lora-scale S"
)


@dataclass(frozen=True)
class LoraSetting:
    """One LoRA of a generation: its file, its scale, and for the PNG its name (the file's stem) and
    A1111's short hash (the first 12 hex digits of the sha256 of the file's tensor data, past its header)."""

    path: str
    scale: float
    name: str
    hash: str

    @classmethod
    def of(cls, path: str | Path, scale: float = 1.0) -> LoraSetting:
        """Check the file and the scale; SdcpuError says what is wrong."""
        file = Path(path)
        if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
            raise SdcpuError(f"LoRA {file.name}: the scale must be a finite number from -100 to 100; got {scale}")
        if not file.is_file():
            raise SdcpuError(f"LoRA {file} does not exist or is not a file")
        if file.suffix != ".safetensors":
            raise SdcpuError(f"LoRA {file} is not a .safetensors file (pickled LoRAs are not read)")
        check_safetensors(file)  # a damaged file is refused here, before any work
        return cls(str(file), float(scale), file.stem, _short_hash(file))

    def record(self) -> dict[str, Any]:
        """For the PNG: name, hash and scale (not the path, which is this machine's)."""
        return {"name": self.name, "hash": self.hash, "scale": self.scale}


def _short_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()[:12]


MAX_LORAS = 16  # in one image; each is a branch on every layer it adapts, and the branches stay compiled


def check_lora_count(loras: tuple[LoraSetting, ...]) -> tuple[LoraSetting, ...]:
    """`loras`, refused when they are more than MAX_LORAS, or when one file's scales (a tag repeated adds
    up, as in A1111) sum beyond MAX_SCALE: a prompt of 1,000 tags took 3 GB and every later image's time."""
    if len(loras) > MAX_LORAS:
        raise SdcpuError(f"{len(loras)} LoRAs in one image, over the limit of {MAX_LORAS}; merge or drop some")
    totals: dict[str, float] = {}
    for lora in loras:
        totals[lora.path] = totals.get(lora.path, 0.0) + lora.scale
    for path, total in totals.items():
        if abs(total) > MAX_SCALE:
            raise SdcpuError(f"LoRA {Path(path).name}: its scales add up to {total:g}, beyond -100 to 100")
    return loras
