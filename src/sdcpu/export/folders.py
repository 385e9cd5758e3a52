"""Where a convert writes: OUT kept apart from its inputs, graphs saved with write failures as OSError,
the library versions its manifest records, and the finished folder moved into place in one rename."""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.outputs import follow_umask

# errno values that say the disk (or a quota or a file-size limit) is full, or that it cannot be written
# (EIO: also OpenVINO's failed writes, save_openvino)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def check_apart(out: Path, inputs: Mapping[str, Path | None]) -> None:
    """Refuse an OUT that is, is inside, or holds one of the convert's inputs (`inputs`: what each is
    called on the command line -> its path). With --force, OUT is replaced as a whole: such an OUT would
    delete its own source, with or without --force."""
    target = out.resolve()
    for name, given in inputs.items():
        if given is None or not given.exists():
            continue  # a hub id, or a path that open_source refuses itself
        source = given.resolve()
        if target == source or target.is_relative_to(source) or source.is_relative_to(target):
            where = "is" if target == source else "is inside" if target.is_relative_to(source) else "holds"
            raise SdcpuError(f"OUT {out} {where} the {name} {given}; convert into another folder")


def save_openvino(model: Any, path: Path, **options: Any) -> None:
    """`openvino.save_model`, whose serializer reports a failed write (a full disk, a file-size limit)
    as RuntimeError("basic_ios::clear: iostream error"): raised here as the OSError it is, naming the file."""
    import openvino as ov

    try:
        ov.save_model(model, path, **options)
    except RuntimeError as err:
        raise OSError(errno.EIO, f"OpenVINO could not write it ({err})", str(path)) from None


def write_failure(err: OSError, out: Path, work: Path) -> SdcpuError:
    """The error for a convert stopped by a failed write (or read) while it built OUT in `work`, which
    is deleted: files are named as they would have been in OUT."""
    name = Path(err.filename) if isinstance(err.filename, str) else None
    if name is None or name.is_relative_to(work):
        where = f"writing {out / Path(*name.relative_to(work).parts[1:])}" if name is not None else "writing a file"
    else:
        where = f"at {name}"  # an input, not what it writes
    advice = "; free some space, or convert to a folder on another disk" if err.errno in FULL else ""
    return SdcpuError(f"the convert failed {where}: {err.strerror or err}{advice}. Nothing was written to {out}")


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


def write_manifest(staged: Path, name: str, text: str) -> None:
    """Write the manifest `name` of the folder `staged` last, then give every file in it the umask's
    permissions (some writers make files 0600, as tempfile does)."""
    (staged / name).write_text(text)
    for path in [staged, *staged.rglob("*")]:
        follow_umask(path)
