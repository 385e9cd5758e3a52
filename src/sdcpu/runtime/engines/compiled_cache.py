"""The compiled-model cache: OpenVINO compiled models exported as blobs, imported by the next process
instead of compiling again.

Each blob is keyed by the graph files' path, size, mtime and inode, the static shapes, the device, the
engine's configuration (precision, dynamic quantization), the graph passes with their revisions and
the OpenVINO version. It is memory-mapped and imported as is: the graph is not read at all, whereas
OpenVINO's own CACHE_DIR reads it and hashes every weight to find its blob, which pages in a second
copy of the weights (0.9 GB for an int8 SD 1.5 UNet). Devices that cannot export compiled models
(AUTO) use CACHE_DIR instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openvino as ov

from sdcpu.cache import cache_limit, trim_blobs, write_cache_file
from sdcpu.runtime.engines.pages import dropping_mapped_pages
from sdcpu.runtime.precision import openvino_capabilities


class CompiledModelCache:
    def __init__(self, folder: Path, core: ov.Core):
        self.folder, self._core = folder, core

    def can_export(self, device: str) -> bool:
        """Whether `device` can export and import compiled models (else: use OpenVINO's CACHE_DIR)."""
        return "EXPORT_IMPORT" in openvino_capabilities(device)

    def blob_path(
        self,
        graph: Path,
        device: str,
        config: dict[str, str],
        shapes: dict[str, tuple[int, ...]],
        passes: Sequence[str],
    ) -> Path:
        """Where the compiled model for these inputs lives. `passes`: the keys of the graph passes run."""
        key: list = [ov.__version__, device, config, sorted(shapes.items()), list(passes)]
        for file in (graph, graph.with_suffix(".bin")):  # an ONNX graph has no .bin
            if file.exists():
                stat = file.stat()
                key.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino])
        return self.folder / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.blob"

    def load(self, blob: Path, device: str, config: dict[str, str]) -> tuple[ov.CompiledModel, np.memmap] | None:
        """The compiled model in `blob` and the mapping it may use in place (keep both alive together);
        None when there is no blob or it cannot be imported (a damaged one is replaced on store)."""
        if not blob.is_file():
            return None
        # Copy-on-write mapping: OpenVINO needs a writable buffer, and never writes to it.
        data = np.memmap(blob, dtype=np.uint8, mode="c")
        try:
            # Pages already read are dropped as the import goes: without it, an int8-hybrid SD 1.5 UNet's
            # import peaked at 1.94 GB instead of 1.16-1.18 GB, for 0.15 s more.
            with dropping_mapped_pages(blob.parent):
                compiled = self._core.import_model(ov.Tensor(data, shared_memory=True), device, config)
        except RuntimeError:
            return None
        # Used now: the least recently used blobs go first when the cache is trimmed. A read-only cache
        # folder is read as it is (and never trimmed either).
        with contextlib.suppress(OSError):
            os.utime(blob)
        return compiled, data

    def store(self, compiled: ov.CompiledModel, blob: Path) -> None:
        """Export `compiled` to `blob`, whole or not at all, even with two processes writing; then trim the
        cache to its limit (sdcpu.cache.cache_limit), the blobs used least recently first."""
        write_cache_file(blob, compiled.export_model().getbuffer())
        trim_blobs(self.folder, blob, cache_limit())
