"""Inference engines behind one small interface: `model(**inputs) -> first output as numpy`
(`model.outputs(**inputs)` for all of them).

`load_model(backend, path, device)` picks the engine by name. The OpenVINO backend reads both
OpenVINO IR and ONNX; ONNX Runtime reads ONNX only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from sdcpu.runtime.errors import SdcpuError

BACKENDS = ("openvino", "onnxruntime")
NATIVE_BACKEND = {"openvino": "openvino", "onnx": "onnxruntime"}


class Model(Protocol):
    def __call__(self, **inputs: np.ndarray) -> np.ndarray: ...

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]: ...

    def release_memory(self) -> None: ...

    def release(self) -> None: ...


def load_model(
    backend: str, path: Path, device: str, cache_dir: Path | None = None, lazy: bool = False, winograd: bool = False
) -> Model:
    """Open the graph at `path` with `backend` on `device` (an OpenVINO device name: CPU, GPU, AUTO).
    `cache_dir`: where OpenVINO keeps compiled models between processes (ONNX Runtime has no such
    cache). `lazy`: read nothing until the first call. `winograd`: OpenVINO on the CPU computes 3x3
    convolutions with Winograd's algorithm (faster, larger in memory; see backends/winograd.py)."""
    if backend == "openvino":
        from sdcpu.runtime.backends.openvino import OpenVINOModel

        return OpenVINOModel(path, device, cache_dir, lazy, winograd)
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
