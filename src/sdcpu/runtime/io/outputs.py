"""Where images are written: the paths checked before any work, and files created as the umask says.

An existing file is kept unless the caller says `overwrite`; the folder must exist and be writable; the
suffix must be .png (the settings travel in PNG text chunks). All of it is checked before a generation
starts, so a bad --out costs nothing, and again at save time, so nothing is lost.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdcpu.errors import SdcpuError

SUFFIXES = (".png",)

MAX_IMAGES = 100_000  # in one run: each is a file, and its working memory is checked (memory_check.py)


def output_paths(path: str | Path, count: int, overwrite: bool = False) -> list[Path]:
    """The files `count` images are written to: `path` itself for one, `stem-i.png` for several.
    Raises SdcpuError, saying what to do, when any cannot be written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise SdcpuError(f"--out {path} is a folder; give a file name such as {path / 'image.png'}")
    if path.suffix.lower() not in SUFFIXES:
        raise SdcpuError(f"--out {path}: sdcpu writes PNG, with the settings in its metadata; use a .png name")
    folder = path.parent
    if not folder.is_dir():
        raise SdcpuError(f"the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SdcpuError(f"the output folder {folder} is not writable; choose another --out")
    if not 1 <= count <= MAX_IMAGES:
        raise SdcpuError(f"num_images must be from 1 to {MAX_IMAGES:,}; got {count}")
    paths = [path] if count == 1 else [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]
    for target in paths:
        if target.exists() and not overwrite:
            raise SdcpuError(f"{target} exists; pass --overwrite to replace it, or choose another --out")
        if target.exists() and not os.access(target, os.W_OK):
            raise SdcpuError(f"{target} exists and is read-only; choose another --out")
    return paths


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a file made by `tempfile` (mode 0600) or a folder (0700) the mode a plain `open` or `mkdir`
    would have given it: 0666 or 0777 less the umask."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask())
