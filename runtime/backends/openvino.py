"""OpenVINO backend. The graph is kept with dynamic shapes on disk and compiled for the static
shapes of the first call (OpenVINO's CPU plugin runs static shapes faster); a call with other
shapes recompiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
from sdcpu.runtime.errors import SdcpuError


class OpenVINOModel:
    def __init__(self, path: Path, device: str):
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot read {path}: {err}") from err
        self.device = device
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._request: ov.InferRequest | None = None

    def _compile(self, shapes: dict[str, tuple[int, ...]]) -> ov.InferRequest:
        self._model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items()})
        try:
            compiled = self._core.compile_model(self._model, self.device, {"PERFORMANCE_HINT": "LATENCY"})
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot compile for device {self.device!r}: {err}") from err
        self._shapes = shapes
        return compiled.create_infer_request()

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        shapes = {name: tuple(value.shape) for name, value in inputs.items()}
        if self._request is None or shapes != self._shapes:
            self._request = self._compile(shapes)
        self._request.infer(inputs)
        return self._request.get_output_tensor(0).data.copy()
