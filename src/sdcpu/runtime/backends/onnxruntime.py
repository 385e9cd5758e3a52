"""ONNX Runtime backend (CPU execution provider, full graph optimisation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from sdcpu.runtime.errors import SdcpuError


def session_options() -> ort.SessionOptions:
    """Full graph optimisation, quiet logs, and every weight's DequantizeLinear folded at load.

    Folding: an int8 folder (export/quantize.py stores weights as int8 + DequantizeLinear) then runs the
    very graph and kernels of its fp32 folder, with fp32 weights in memory. Left unfolded, ONNX Runtime
    1.32 dequantized at every call and fed MatMuls with a weight computed at run time, a path no fp32
    folder takes; on an AMD Zen 5 (AVX-512, AVX-VNNI) it killed the process with SIGFPE while running the
    tiny int8 text encoder (not reproducible on Zen 3 or Zen 4). The folder stays int8 on disk; for int8
    weights in memory, use an OpenVINO folder."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Disables QDQ rewrites (there are none in sdcpu's graphs) and lets constant folding fold DequantizeLinear.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class OnnxRuntimeModel:
    compute_precision: str | None = "f32"  # the CPU execution provider's float kernels

    def __init__(self, path: Path, lazy: bool = False):
        self.path = path
        self._session: ort.InferenceSession | None = None if lazy else self._open()
        # Shrink the CPU memory arena back after every run. Kept, it only grows: an int8 SD 1.5 UNet
        # at 512x512 held 4.8 GB after its second step, against 0.05 GB with this and the same step time.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _open(self) -> ort.InferenceSession:
        options = session_options()
        try:
            return ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for unreadable graphs
            raise SdcpuError(f"ONNX Runtime cannot load {self.path}: {err}") from err

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self.outputs(**inputs)[0]

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in order."""
        self._session = self._session or self._open()
        return list(self._session.run(None, inputs, self._run_options))

    def release_memory(self) -> None:
        """Nothing to do: every run returns its intermediate buffers to the system as it ends."""

    def release(self) -> None:
        """Free the session and its weights; the next call opens the graph again."""
        self._session = None
