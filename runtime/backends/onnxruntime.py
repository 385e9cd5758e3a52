"""ONNX Runtime backend (CPU execution provider, full graph optimisation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from sdcpu.runtime.errors import SdcpuError


class OnnxRuntimeModel:
    def __init__(self, path: Path):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for unreadable graphs
            raise SdcpuError(f"ONNX Runtime cannot load {path}: {err}") from err

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, inputs)[0]
