"""Inference engines behind one small interface: `model(**inputs) -> first output as numpy`
(`model.outputs(**inputs)` for all of them).

Inputs are cast to the dtypes the graph declares (`conform`).
`load_model(path, options)` opens a graph with the engine the resolved load options name. The
OpenVINO backend reads both OpenVINO IR and ONNX; ONNX Runtime reads ONNX only. Engine-neutral: what
is particular to an engine (graph passes, the compiled-model cache) lives in its own modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sdcpu.runtime.errors import SdcpuError

if TYPE_CHECKING:
    from sdcpu.runtime.backends.graph_passes import GraphPass
    from sdcpu.runtime.options import LoadOptions


@dataclass(frozen=True)
class GraphInterface:
    """What the pipeline asks of a graph beyond what its file declares. `outputs`: tensors inside the
    graph, named there, returned after its declared outputs (DeepCache's deep features: the stored `unet`
    keeps the single output other tools expect). `float_inputs`: inputs stored as integers, for the
    tools that feed them so, that the graph only converts to float; fed as float32 instead, so that
    fractional timesteps survive (OpenVINO; ONNX Runtime cannot retype a graph, and rounds them).
    `dynamic`: compiled with the shapes the file declares, not the call's (OpenVINO 2026.4's CPU plugin
    crashes compiling DPT-Hybrid's graph reshaped to static shapes; dynamic, it runs)."""

    outputs: tuple[str, ...] = ()
    float_inputs: tuple[str, ...] = ()
    dynamic: bool = False

    @property
    def keys(self) -> list[str]:
        """For the compiled-model cache's key: what this changes in the compiled graph."""
        keys = [f"output {name}" for name in self.outputs] + [f"float {name}" for name in self.float_inputs]
        return keys + (["dynamic"] if self.dynamic else [])


def conform(inputs: dict[str, np.ndarray], declared: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    """Each input in the dtype its graph declares; floats fed to an integer input are rounded to nearest."""
    fed = {}
    for name, value in inputs.items():
        dtype = declared.get(name, value.dtype)
        if value.dtype != dtype and np.issubdtype(value.dtype, np.floating) and np.issubdtype(dtype, np.integer):
            value = np.rint(value)
        fed[name] = value.astype(dtype, copy=False)
    return fed


class Model(Protocol):
    @property
    def compute_precision(
        self,
    ) -> str | None: ...  # what the engine computes in ("f32", "bf16", ...); None until compiled

    def __call__(self, **inputs: np.ndarray) -> np.ndarray: ...

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]: ...

    def release_memory(self) -> None: ...

    def release(self) -> None: ...


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
        from sdcpu.runtime.backends.openvino import OpenVINOModel

        return OpenVINOModel(path, options, passes, lazy, interface or GraphInterface())
    if options.backend == "onnxruntime":
        if passes:
            raise SdcpuError(f"graph passes ({', '.join(p.name for p in passes)}) need --backend openvino")
        from sdcpu.runtime.backends.onnxruntime import OnnxRuntimeModel

        return OnnxRuntimeModel(path, lazy, interface.outputs if interface is not None else ())
    raise SdcpuError(f"unknown backend {options.backend!r}; resolve the load options first")
