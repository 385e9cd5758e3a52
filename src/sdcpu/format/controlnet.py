"""The manifest `sdcpu-controlnet.json` of a converted ControlNet folder.

A ControlNet (Zhang et al., https://arxiv.org/abs/2302.05543) is converted on its own, into its own
folder, as A1111 keeps them apart from the models they steer: one ControlNet serves every checkpoint
of its family. Its manifest records what the runtime checks before it adds the ControlNet to a UNet
(the width of the text it reads, and the number and widths of the residuals it gives) and the sha256
of every file, checked as a model folder's are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import GRAPH_FILE, files_digest, load_apart, verify_files
from sdcpu.format.schema import FORMATS

CONTROLNET_MANIFEST = "sdcpu-controlnet.json"
CONTROLNET_VERSION = 1
COMPONENT = "controlnet"


@dataclass(frozen=True)
class ControlNetManifest:
    source: str
    family: str  # the model family it was trained with: sd1, sd2 or sdxl
    format: str
    precision: str
    cross_attention_dim: int  # the width of the text embeddings it reads
    residual_channels: list[int]  # the width of each down-block residual, then of the middle block's
    residual_levels: list[int]  # how many times each is halved from the latents' size
    files: dict[str, dict[str, Any]]
    global_pool_conditions: bool = False  # shuffle-style: residuals averaged over the image, as guess mode
    inputs: dict[str, Any] = field(default_factory=dict)  # the graph's inputs, as read after export
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"sdcpu_controlnet": CONTROLNET_VERSION, **self.__dict__}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, folder: Path) -> ControlNetManifest:
        """Read `folder`'s manifest; SdcpuError saying what to do when it is missing or damaged."""
        path = Path(folder) / CONTROLNET_MANIFEST
        if not path.is_file():
            raise SdcpuError(
                f"{folder} is not a converted ControlNet (no {CONTROLNET_MANIFEST}); convert a diffusers "
                "ControlNetModel folder into it with `sdcpu convert SOURCE OUT`"
            )
        return load_apart(cls, path, "sdcpu_controlnet", CONTROLNET_VERSION, _valid, "convert the ControlNet again")

    def short_hash(self) -> str:
        """The first 8 hex digits of the sha256 of its files' hashes: what names these weights."""
        return files_digest(self.files)[:8]

    @property
    def down_residuals(self) -> int:
        return len(self.residual_channels) - 1

    def graph_path(self, folder: Path) -> Path:
        return Path(folder) / COMPONENT / GRAPH_FILE[self.format]

    def verify(self, folder: Path, mode: str = "fast", record: Path | None = None) -> None:
        """Every file present, inside the folder, with its size and sha256 (Manifest.verify's modes)."""
        verify_files(folder, self.files, mode, record, CONTROLNET_MANIFEST)


def _valid(manifest: ControlNetManifest) -> bool:
    return manifest.format in FORMATS and len(manifest.residual_levels) == len(manifest.residual_channels)
