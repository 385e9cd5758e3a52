"""OpenVINO backend. The graph is kept with dynamic shapes on disk and compiled for the static
shapes of the first call (OpenVINO's CPU plugin runs static shapes faster); a call with other
shapes recompiles. With a cache folder, OpenVINO stores each compiled model there (keyed by graph,
shapes, device and settings), so the next process imports it instead of compiling again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
from sdcpu.runtime.errors import SdcpuError


class OpenVINOModel:
    def __init__(self, path: Path, device: str, cache_dir: Path | None = None, lazy: bool = False):
        self.path, self.device, self.cache_dir = path, device, cache_dir
        self._core = ov.Core()
        self._model: ov.Model | None = None if lazy else self._read()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._request: ov.InferRequest | None = None

    def _read(self) -> ov.Model:
        try:
            return self._core.read_model(str(self.path))
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot read {self.path}: {err}") from err

    def _compile(self, shapes: dict[str, tuple[int, ...]]) -> ov.InferRequest:
        model = self._model or self._read()
        model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        try:
            compiled = self._core.compile_model(model, self.device, config)
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot compile for device {self.device!r}: {err}") from err
        # The compiled model holds its own (repacked) weights: drop the read graph and its mapped file,
        # or both copies stay resident. A call with new shapes reads it again.
        self._model, self._shapes = None, shapes
        return compiled.create_infer_request()

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self._infer(inputs).get_output_tensor(0).data.copy()

    def outputs(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in order."""
        request = self._infer(inputs)
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]

    def _infer(self, inputs: dict[str, np.ndarray]) -> ov.InferRequest:
        shapes = {name: tuple(value.shape) for name, value in inputs.items()}
        if self._request is None or shapes != self._shapes:
            self._request = self._compile(shapes)
        self._request.infer(inputs)
        return self._request

    def release(self) -> None:
        """Free the graph and the compiled model; the next call reads (and compiles or imports) again."""
        self._model = self._request = self._shapes = None
