"""Inference engines behind one small interface: `model(**inputs) -> first output as numpy`
(`model.outputs(**inputs)` for all of them).

`load_model(path, options)` opens a graph with the engine the resolved load options name. The
OpenVINO backend reads both OpenVINO IR and ONNX; ONNX Runtime reads ONNX only. Engine-neutral: what
is particular to an engine (graph passes, the compiled-model cache) lives in its own modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sdcpu.runtime.errors import SdcpuError

if TYPE_CHECKING:
    from sdcpu.runtime.backends.graph_passes import GraphPass
    from sdcpu.runtime.options import LoadOptions


class Model(Protocol):
    @property
    def compute_precision(
        self,
    ) -> str | None: ...  # what the engine computes in ("f32", "bf16", ...); None until compiled

    def __call__(self, **inputs: np.ndarray) -> np.ndarray: ...

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]: ...

    def release_memory(self) -> None: ...

    def release(self) -> None: ...


def load_model(path: Path, options: LoadOptions, passes: Sequence[GraphPass] = (), lazy: bool = False) -> Model:
    """Open the graph at `path` as `options` say (resolved by `LoadOptions.resolve`: backend, device,
    compute precision, int8 activations, cache). `passes`: graph passes to run before compiling
    (OpenVINO only). `lazy`: read nothing until the first call."""
    if options.backend == "openvino":
        from sdcpu.runtime.backends.openvino import OpenVINOModel

        return OpenVINOModel(path, options, passes, lazy)
    if options.backend == "onnxruntime":
        if passes:
            raise SdcpuError(f"graph passes ({', '.join(p.name for p in passes)}) need --backend openvino")
        from sdcpu.runtime.backends.onnxruntime import OnnxRuntimeModel

        return OnnxRuntimeModel(path, lazy)
    raise SdcpuError(f"unknown backend {options.backend!r}; resolve the load options first")
