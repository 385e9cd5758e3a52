"""The compile cache folder: what it holds, and emptying it.

Only files sdcpu or OpenVINO write there are counted or deleted (compiled-model blobs, partial
writes, the record of verified hashes, the manifests of other tools' folders), so pointing
$SDCPU_CACHE_DIR at a shared folder is safe.
"""

from __future__ import annotations

import os
from pathlib import Path

from sdcpu.errors import SdcpuError

# The sha256 of model files already checked, with their size, mtime and inode.
VERIFIED_FILES = "verified-files.json"
# The manifests built for folders that other tools converted (format/foreign.py), one per folder.
FOREIGN_MANIFESTS = "foreign-manifest-*.json"
PATTERNS = (
    "*.blob",
    "*.blob.*.partial",
    VERIFIED_FILES,
    f"{VERIFIED_FILES}.*.partial",
    FOREIGN_MANIFESTS,
    f"{FOREIGN_MANIFESTS}.*.partial",
)


# Compiled models kept at most, in bytes, unless $SDCPU_CACHE_MAX_GB says otherwise: about four SDXL UNets or a
# dozen SD 1.5 ones. A blob's key holds its graph file's path, size, mtime and inode, so every reconverted folder,
# new size, LoRA rank or ControlNet compiles a new one; without a bound the folder only grows.
DEFAULT_MAX_GB = 16.0


def cache_limit() -> int:
    """The most bytes of compiled models the cache keeps: $SDCPU_CACHE_MAX_GB, else DEFAULT_MAX_GB."""
    given = os.environ.get("SDCPU_CACHE_MAX_GB")
    try:
        gigabytes = float(given) if given else DEFAULT_MAX_GB
    except ValueError:
        raise SdcpuError(f"SDCPU_CACHE_MAX_GB must be a number of gigabytes; got {given!r}") from None
    if not 0 <= gigabytes < 2**40:  # NaN and infinity fail too
        raise SdcpuError(f"SDCPU_CACHE_MAX_GB must be a finite number of gigabytes, 0 or more; got {given!r}")
    return int(gigabytes * 2**30)


def trim_blobs(folder: Path, keep: Path, limit: int) -> list[Path]:
    """Delete the compiled models used least recently (their mtime, touched when imported) until those in
    `folder` take at most `limit` bytes, never `keep` (the one just written); returns those deleted. A blob
    another process has imported stays valid for it: its mapping outlives the file's name."""
    blobs = []
    for blob in folder.glob("*.blob"):
        try:
            blobs.append((blob.stat().st_mtime_ns, blob.stat().st_size, blob))
        except FileNotFoundError:  # deleted by another process meanwhile
            continue
    total = sum(size for _, size, _ in blobs)
    removed = []
    for _, size, blob in sorted(blobs):
        if total <= limit:
            break
        if blob == keep:
            continue
        blob.unlink(missing_ok=True)
        total -= size
        removed.append(blob)
    return removed


def default_cache_dir() -> Path:
    """Where compiled models are cached unless told otherwise: $SDCPU_CACHE_DIR, else the user cache."""
    if os.environ.get("SDCPU_CACHE_DIR"):
        return Path(os.environ["SDCPU_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "sdcpu" / "openvino"


def write_cache_file(path: Path, data: bytes | memoryview) -> None:
    """Write `path` in the cache folder whole or not at all: to a temporary name, then renamed, so that a
    concurrent reader never sees half a file and a failed write leaves nothing behind."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as err:
        if partial.exists():
            partial.unlink()
        raise SdcpuError(
            f"cannot write to the cache folder {path.parent} ({err}); set SDCPU_CACHE_DIR to a writable "
            "folder or pass --no-cache"
        ) from err


def cache_files(folder: Path) -> list[Path]:
    """The cache's own files in `folder` (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted({f for pattern in PATTERNS for f in folder.glob(pattern) if f.is_file()})


def clear_cache(folder: Path) -> int:
    """Delete the cache's own files in `folder`; returns the bytes freed."""
    freed = 0
    for f in cache_files(folder):
        size = f.stat().st_size
        try:
            f.unlink()
        except OSError as err:
            raise SdcpuError(f"cannot delete {f} ({err}); check the folder's permissions") from err
        freed += size
    return freed
