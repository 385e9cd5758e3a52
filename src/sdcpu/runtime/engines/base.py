"""The interface every engine implements: `model(**inputs) -> first output as numpy` (`model.outputs(**inputs)`
for all of them), what the pipeline asks of a graph beyond its file (`GraphInterface`), inputs whose rows
repeat (`Repeated`), and the input casts (`conform`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class GraphInterface:
    """What the pipeline asks of a graph beyond what its file declares. `outputs`: tensors inside the
    graph, named there, returned after its declared outputs (DeepCache's deep features: the stored `unet`
    keeps the single output other tools expect). `float_inputs`: inputs stored as integers, for the
    tools that feed them so, that the graph only converts to float; fed as float32 instead, so that
    fractional timesteps survive (OpenVINO; ONNX Runtime cannot retype a graph, and rounds them).
    `dynamic`: compiled with the shapes the file declares, not the call's (OpenVINO 2026.4's CPU plugin
    crashes compiling DPT-Hybrid's graph reshaped to static shapes; dynamic, it runs). `half_outputs`: the
    declared outputs given as float16, for a network whose outputs another network reads at bf16 or f16
    (ControlNet's residuals): half the bytes (OpenVINO; ONNX Runtime gives them as declared)."""

    outputs: tuple[str, ...] = ()
    float_inputs: tuple[str, ...] = ()
    dynamic: bool = False
    half_outputs: bool = False

    @property
    def keys(self) -> list[str]:
        """For the compiled-model cache's key: what this changes in the compiled graph."""
        keys = [f"output {name}" for name in self.outputs] + [f"float {name}" for name in self.float_inputs]
        return keys + (["dynamic"] if self.dynamic else []) + (["half outputs"] if self.half_outputs else [])


@dataclass(frozen=True)
class Repeated:
    """An input whose rows are `rows` twice over: in a classifier-free guided batch, an input that the two
    halves share (the sample, the timestep, a control image). An engine may compute what depends on such
    inputs alone once (engines/passes/shared_rows.py); otherwise it is fed whole."""

    rows: np.ndarray

    def whole(self) -> np.ndarray:
        return np.concatenate([self.rows, self.rows])


Input = np.ndarray | Repeated


def whole(inputs: dict[str, Input]) -> dict[str, np.ndarray]:
    """The inputs with every repeated one written out."""
    return {name: value.whole() if isinstance(value, Repeated) else value for name, value in inputs.items()}


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
    """`adapt(branches, tensors)`: compile with a graph pass that adds inputs, fed `tensors` at every call
    (runtime/lora/branches.py); `extend(pass)`: compile with a graph pass that adds inputs given at every call
    (runtime/controlnet/residuals.py). An engine that cannot rewrite its graph raises SdcpuError."""

    @property
    def compute_precision(
        self,
    ) -> str | None: ...  # what the engine computes in ("f32", "bf16", ...); None until compiled

    def __call__(self, **inputs: Input) -> np.ndarray: ...

    def outputs(self, **inputs: Input) -> list[np.ndarray]: ...

    def adapt(self, branches: Any, tensors: dict[str, np.ndarray]) -> None: ...

    def extend(self, graph_pass: Any) -> None: ...

    def release_memory(self) -> None: ...

    def release(self) -> None: ...
