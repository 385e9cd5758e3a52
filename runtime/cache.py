"""The compile cache folder: what it holds, and emptying it.

Only files sdcpu or OpenVINO write there are counted or deleted (compiled-model blobs, partial
writes, the record of verified hashes), so pointing $SDCPU_CACHE_DIR at a shared folder is safe.
"""

from __future__ import annotations

from pathlib import Path

from sdcpu.runtime.errors import SdcpuError

PATTERNS = ("*.blob", "*.blob.*.partial", "verified-files.json", ".verified-files.json.*.tmp")


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
