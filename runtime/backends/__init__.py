"""Inference engines behind one small interface: `model(**inputs) -> first output as numpy`
(`model.outputs(**inputs)` for all of them).

`load_model(backend, path, device)` picks the engine by name. The OpenVINO backend reads both
OpenVINO IR and ONNX; ONNX Runtime reads ONNX only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from sdcpu.runtime.errors import SdcpuError

BACKENDS = ("openvino", "onnxruntime")
NATIVE_BACKEND = {"openvino": "openvino", "onnx": "onnxruntime"}


@dataclass(frozen=True)
class GraphRewrites:
    """Changes the OpenVINO backend makes to a graph before compiling it; ONNX Runtime makes none.
    `winograd`: 3x3 convolutions by Winograd's algorithm, on the CPU only (exact within float32
    rounding; faster, larger in memory; see backends/winograd.py). `token_downsampling`: a factor f > 1
    makes the highest-resolution self-attention use every f-th key and value along each axis
    (approximate; see backends/token_downsampling.py). `chunked_attention`: in a graph with FakeQuantize,
    large attentions are computed over slices of their queries, on the CPU only (exact; far less
    memory; see backends/chunked_attention.py)."""

    winograd: bool = False
    token_downsampling: int = 1
    chunked_attention: bool = False


class Model(Protocol):
    compute_precision: str | None  # what the engine computes in ("f32", "bf16", ...); None until compiled

    def __call__(self, **inputs: np.ndarray) -> np.ndarray: ...

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]: ...

    def release_memory(self) -> None: ...

    def release(self) -> None: ...


def load_model(
    backend: str,
    path: Path,
    device: str,
    cache_dir: Path | None = None,
    lazy: bool = False,
    rewrites: GraphRewrites = GraphRewrites(),
    precision: str | None = "f32",
    int8_activations: bool = False,
) -> Model:
    """Open the graph at `path` with `backend` on `device` (an OpenVINO device name: CPU, GPU, AUTO).
    `cache_dir`: where OpenVINO keeps compiled models between processes (ONNX Runtime has no such
    cache). `lazy`: read nothing until the first call. `rewrites`: see GraphRewrites. `precision`: the
    compute precision, "f32" or "bf16" (resolved by runtime/precision.py; None: an OpenVINO device's
    own default); ONNX Runtime computes in f32. `int8_activations` (OpenVINO only, as resolved by
    runtime/precision.py): MatMuls with int8 or int4
    weights quantize their activations to int8 on the fly (OpenVINO's dynamic quantization); approximate."""
    if backend == "openvino":
        from sdcpu.runtime.backends.openvino import OpenVINOModel

        return OpenVINOModel(path, device, cache_dir, lazy, rewrites, precision, int8_activations)
    if backend == "onnxruntime":
        if path.suffix != ".onnx":
            raise SdcpuError(f"onnxruntime cannot read {path.name}; use --backend openvino for this folder")
        if device.upper() != "CPU":
            raise SdcpuError(
                f"the onnxruntime backend runs on the CPU only (asked for {device}); use --backend openvino"
            )
        from sdcpu.runtime.backends.onnxruntime import OnnxRuntimeModel

        return OnnxRuntimeModel(path, lazy)
    raise SdcpuError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
