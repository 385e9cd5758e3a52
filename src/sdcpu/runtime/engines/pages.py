"""Dropping mapped file pages that a process no longer reads (Linux only; elsewhere a no-op).

OpenVINO keeps a model's weights file, or its compiled-model cache blob, memory-mapped after compiling,
although the CPU plugin has copied almost every weight it uses into buffers of its own (repacked for its
kernels). The mapped pages are clean and shared with the page cache: the kernel drops them under memory
pressure, but until then they count in the process's resident set (about 0.9 GB for an int8 SD 1.5
UNet). madvise(MADV_DONTNEED) unmaps them from this process now; a page that is read again is mapped
back from the page cache. That is safe for any mapping no one has written to: read-only ones, and
copy-on-write ones with no private (anonymous) page yet. Only those are touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MADV_DONTNEED = 4  # linux/mman.h


def drop_mapped_pages(*folders: Path) -> int:
    """Drop the resident pages of unwritten mappings of files under `folders`; returns the bytes covered."""
    if sys.platform != "linux":
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    covered = 0
    for start, end in _unwritten_mappings(tuple(str(f.resolve()) + "/" for f in folders)):
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            covered += end - start
    return covered


def _unwritten_mappings(prefixes: tuple[str, ...]) -> list[tuple[int, int]]:
    # /proc/self/smaps: a header "start-end perms offset dev inode path" per mapping, then "Key: value kB"
    # lines; "Anonymous" counts the pages of a file mapping that were written (copied on write).
    found: list[list] = []  # [start, end, writable, anonymous kB, under one of the prefixes]
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split(maxsplit=5)
            if not fields[0].endswith(":"):
                path = fields[5].rstrip("\n") if len(fields) == 6 else ""
                start, end = (int(x, 16) for x in fields[0].split("-"))
                found.append([start, end, "w" in fields[1], 0, path.startswith(prefixes)])
            elif fields[0] == "Anonymous:":
                found[-1][3] = int(fields[1])
    return [(start, end) for start, end, writable, anonymous, ours in found if ours and not (writable and anonymous)]


@contextmanager
def dropping_mapped_pages(*folders: Path, interval_s: float = 0.05) -> Iterator[None]:
    """Drop the unwritten mapped pages of files under `folders` every `interval_s` while the block runs
    (Linux only). For OpenVINO's import of a compiled model: it reads the whole mapped blob once while
    building its own buffers, and the pages it has read would otherwise stay resident until it returns."""
    if sys.platform != "linux":
        yield
        return
    done = threading.Event()

    def drop() -> None:
        while not done.wait(interval_s):
            drop_mapped_pages(*folders)

    worker = threading.Thread(target=drop, name="sdcpu-drop-pages", daemon=True)
    worker.start()
    try:
        yield
    finally:
        done.set()
        worker.join()
