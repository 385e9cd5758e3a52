"""The manifest `sdcpu-annotator.json` of a converted annotator folder: a network that makes control images
of photos (A1111's "preprocessors"). Today one kind: "depth", a monocular depth estimator (transformers'
DPT, as A1111's `depth_midas`, or Depth Anything), converted on its own as ControlNets are.

The folder holds `depth_estimator/` (the graph and its config) and `feature_extractor/` (its image
processor's settings), the layout of an SD 2 depth model's own estimator, so either serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import GRAPH_FILE, files_digest, load_apart, verify_files
from sdcpu.format.schema import FORMATS

ANNOTATOR_MANIFEST = "sdcpu-annotator.json"
ANNOTATOR_VERSION = 1
KINDS = {"depth": "depth_estimator"}  # kind -> its network's folder


@dataclass(frozen=True)
class AnnotatorManifest:
    kind: str
    source: str
    format: str
    precision: str
    files: dict[str, dict[str, Any]]
    inputs: dict[str, Any] = field(default_factory=dict)  # the graph's inputs, as read after export
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"sdcpu_annotator": ANNOTATOR_VERSION, **self.__dict__}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, folder: Path) -> AnnotatorManifest:
        """Read `folder`'s manifest; SdcpuError saying what to do when it is missing or damaged."""
        path = Path(folder) / ANNOTATOR_MANIFEST
        if not path.is_file():
            raise SdcpuError(
                f"{folder} is not a converted annotator (no {ANNOTATOR_MANIFEST}); convert a depth estimator "
                "into it with `sdcpu convert SOURCE OUT` (for example Intel/dpt-hybrid-midas)"
            )
        return load_apart(cls, path, "sdcpu_annotator", ANNOTATOR_VERSION, _valid, "convert the annotator again")

    def short_hash(self) -> str:
        """The first 8 hex digits of the sha256 of its files' hashes."""
        return files_digest(self.files)[:8]

    def graph_path(self, folder: Path) -> Path:
        return Path(folder) / KINDS[self.kind] / GRAPH_FILE[self.format]

    def verify(self, folder: Path, mode: str = "fast", record: Path | None = None) -> None:
        """Every file present, inside the folder, with its size and sha256 (Manifest.verify's modes)."""
        verify_files(folder, self.files, mode, record, ANNOTATOR_MANIFEST)


def _valid(manifest: AnnotatorManifest) -> bool:
    return manifest.format in FORMATS and manifest.kind in KINDS
