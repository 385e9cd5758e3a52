"""What every convert writes last: the library versions its manifest records, and the finished folder
moved into place in one rename."""

from __future__ import annotations

import shutil
import time
from importlib import metadata
from pathlib import Path


def versions(fmt: str) -> dict[str, str]:
    names = ["sdcpu", "torch", "diffusers", "transformers", "nncf", "openvino" if fmt == "openvino" else "onnx"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def move_into_place(staged: Path, out: Path) -> None:
    # Rename is atomic within one filesystem; an existing OUT (with --force) is swapped out first.
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{time.time_ns()}"
        out.rename(old)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
