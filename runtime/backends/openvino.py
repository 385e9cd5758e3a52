"""OpenVINO backend. The graph is kept with dynamic shapes on disk and compiled for the static
shapes of the first call (OpenVINO's CPU plugin runs static shapes faster); a call with other
shapes recompiles.

With a cache folder, each compiled model is exported there as a blob, keyed by the graph files'
size, mtime and inode, the shapes, the device and the OpenVINO version, and the next process imports
it instead of compiling. The blob is memory-mapped and imported as is: the graph is not read at all,
whereas OpenVINO's own CACHE_DIR reads it and hashes every weight to find its blob, which pages in a
second copy of the weights (0.9 GB for an int8 SD 1.5 UNet). Devices that cannot export compiled
models (AUTO) use CACHE_DIR."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import openvino as ov
from sdcpu.runtime.backends import GraphRewrites, chunked_attention, token_downsampling, winograd
from sdcpu.runtime.cache import write_cache_file
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.pages import drop_mapped_pages, dropping_mapped_pages

CONFIG = {"PERFORMANCE_HINT": "LATENCY"}
# Dynamic quantization, on the CPU, is off unless asked for: on CPUs with VNNI or AMX the plugin otherwise
# quantizes the activations of every MatMul with int8 or int4 weights to int8 on the fly (groups of 32), so an
# "int8 weights, float compute" folder computed in int8 there and in float elsewhere (0.05 apart on the tiny
# int8 pipeline).
INT8_ACTIVATIONS = {False: "0", True: "32"}  # DYNAMIC_QUANTIZATION_GROUP_SIZE; 32 is OpenVINO's default


class OpenVINOModel:
    def __init__(
        self,
        path: Path,
        device: str,
        cache_dir: Path | None,
        lazy: bool,
        rewrites: GraphRewrites,
        precision: str | None = "f32",
        int8_activations: bool = False,
    ):
        self.path, self.device, self.cache_dir = path, device, cache_dir
        # Always set on the CPU: its plugin's default is bf16 on CPUs with native bf16 and f32 elsewhere.
        # None leaves another device (GPU) at its own default.
        self.config = dict(CONFIG)
        if device.upper() == "CPU" or int8_activations:
            self.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = INT8_ACTIVATIONS[int8_activations]
        if precision:
            self.config["INFERENCE_PRECISION_HINT"] = precision  # our names are OpenVINO's (runtime/precision.py)
        self.compute_precision: str | None = None  # what the compiled model reports, once compiled
        # Winograd and chunked attention answer how the CPU plugin runs convolutions and attention; other
        # devices (GPU) pick their own algorithms.
        cpu = device.upper() == "CPU"
        self.rewrites = replace(
            rewrites, winograd=rewrites.winograd and cpu, chunked_attention=rewrites.chunked_attention and cpu
        )
        self._core = ov.Core()
        # With a cache folder, the graph is read only when there is no blob to import.
        self._model: ov.Model | None = None if lazy or cache_dir is not None else self._read()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._compiled: ov.CompiledModel | None = None
        self._blob: np.memmap | None = None  # an imported model may use the blob's memory in place
        self._request: ov.InferRequest | None = None

    def _read(self) -> ov.Model:
        try:
            return self._core.read_model(str(self.path))
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot read {self.path}: {err}") from err

    def _compile(self, shapes: dict[str, tuple[int, ...]]) -> ov.InferRequest:
        blob = self._blob_path(shapes) if self.cache_dir is not None and self._can_export() else None
        compiled = self._import(blob) if blob is not None and blob.is_file() else None
        if compiled is None:
            compiled = self._compile_graph(shapes, use_cache_dir=blob is None)
            if blob is not None:
                self._export(compiled, blob)
        # The compiled model holds its own (repacked) weights: drop the read graph, and the pages of the
        # weights file and of the blob that stay mapped, or both copies stay resident.
        self._model, self._shapes, self._compiled = None, shapes, compiled
        self.compute_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        drop_mapped_pages(*[f for f in (self.path.parent, self.cache_dir) if f is not None])
        return compiled.create_infer_request()

    def _compile_graph(self, shapes: dict[str, tuple[int, ...]], use_cache_dir: bool) -> ov.CompiledModel:
        model = self._model or self._read()
        model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        # Both need the static shapes: the tile size depends on the map's size, the picked tokens on the grid's.
        if self.rewrites.winograd:
            winograd.rewrite_convolutions(model)
        if self.rewrites.token_downsampling > 1:
            token_downsampling.downsample_self_attention(model, self.rewrites.token_downsampling)
        if self.rewrites.chunked_attention:  # after token downsampling, which shrinks the score matrices
            chunked_attention.split_queries(model)
        config = dict(self.config)
        if use_cache_dir and self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        try:
            return self._core.compile_model(model, self.device, config)
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot compile for device {self.device!r}: {err}") from err

    def _can_export(self) -> bool:
        try:
            return "EXPORT_IMPORT" in self._core.get_property(self.device, "OPTIMIZATION_CAPABILITIES")
        except RuntimeError:  # a device that is not there: compiling for it will say so
            return False

    def _blob_path(self, shapes: dict[str, tuple[int, ...]]) -> Path:
        assert self.cache_dir is not None
        key: list = [ov.__version__, self.device, self.config, sorted(shapes.items())]
        # Blobs without rewrites keep the key they had before rewrites existed.
        key += [f"winograd {winograd.REVISION}"] if self.rewrites.winograd else []
        factor = self.rewrites.token_downsampling
        key += [f"token downsampling {factor} {token_downsampling.REVISION}"] if factor > 1 else []
        key += [f"chunked attention {chunked_attention.REVISION}"] if self.rewrites.chunked_attention else []
        for file in (self.path, self.path.with_suffix(".bin")):  # an ONNX graph has no .bin
            if file.exists():
                stat = file.stat()
                key.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino])
        return self.cache_dir / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.blob"

    def _import(self, blob: Path) -> ov.CompiledModel | None:
        # Copy-on-write mapping: OpenVINO needs a writable buffer, and never writes to it.
        data = np.memmap(blob, dtype=np.uint8, mode="c")
        try:
            # Pages already read are dropped as the import goes: without it, an int8-hybrid SD 1.5 UNet's
            # import peaked at 1.94 GB instead of 1.16-1.18 GB, for 0.15 s more.
            with dropping_mapped_pages(blob.parent):
                compiled = self._core.import_model(ov.Tensor(data, shared_memory=True), self.device, self.config)
        except RuntimeError:  # a damaged blob: compile again and replace it
            return None
        self._blob = data
        return compiled

    def _export(self, compiled: ov.CompiledModel, blob: Path) -> None:
        write_cache_file(blob, compiled.export_model().getbuffer())  # whole or absent, even with two processes

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self._infer(inputs).get_output_tensor(0).data.copy()

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in order."""
        request = self._infer(inputs)
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]

    def _infer(self, inputs: dict[str, np.ndarray]) -> ov.InferRequest:
        shapes = {name: tuple(value.shape) for name, value in inputs.items()}
        if self._request is None or shapes != self._shapes:
            self._request = self._compiled = self._blob = None  # in this order: each may use the next
            self._request = self._compile(shapes)
        self._request.infer(inputs)
        return self._request

    def release_memory(self) -> None:
        """Free the buffers of intermediate results (about 1 GB for an SD 1.5 UNet at 512x512), keeping
        the compiled model; the next call allocates them again."""
        if self._compiled is not None:
            self._compiled.release_memory()

    def release(self) -> None:
        """Free the graph and the compiled model; the next call reads (and compiles or imports) again."""
        self._model = self._request = self._shapes = self._compiled = self._blob = None
