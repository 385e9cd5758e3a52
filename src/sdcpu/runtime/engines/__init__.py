"""Inference engines behind one small interface: `model(**inputs) -> first output as numpy`
(`model.outputs(**inputs)` for all of them).

Inputs are cast to the dtypes the graph declares (`conform`).
`load_model(path, options)` opens a graph with the engine the resolved load options name. The
OpenVINO backend reads both OpenVINO IR and ONNX; ONNX Runtime reads ONNX only. Engine-neutral: what
is particular to an engine (graph passes, the compiled-model cache) lives in its own modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sdcpu.errors import SdcpuError
from sdcpu.runtime.engines.base import GraphInterface, Input, Model, Repeated, conform

if TYPE_CHECKING:
    from sdcpu.runtime.engines.passes import GraphPass
    from sdcpu.runtime.options import LoadOptions

__all__ = ["GraphInterface", "Input", "Model", "Repeated", "conform", "load_model"]


def load_model(
    path: Path,
    options: LoadOptions,
    passes: Sequence[GraphPass] = (),
    lazy: bool = False,
    interface: GraphInterface | None = None,
) -> Model:
    """Open the graph at `path` as `options` say (resolved by `LoadOptions.resolve`: backend, device,
    compute precision, int8 activations, cache). `passes`: graph passes to run before compiling
    (OpenVINO only). `lazy`: read nothing until the first call. `interface`: see GraphInterface."""
    if options.backend == "openvino":
        from sdcpu.runtime.engines.openvino import OpenVINOModel

        return OpenVINOModel(path, options, passes, lazy, interface or GraphInterface())
    if options.backend == "onnxruntime":
        if passes:
            raise SdcpuError(f"graph passes ({', '.join(p.name for p in passes)}) need --backend openvino")
        from sdcpu.runtime.engines.onnxruntime import OnnxRuntimeModel

        return OnnxRuntimeModel(path, lazy, interface.outputs if interface is not None else (), options.threads)
    raise SdcpuError(f"unknown backend {options.backend!r}; resolve the load options first")
