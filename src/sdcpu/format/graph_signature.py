"""A graph's inputs as its file declares them: name -> dtype and shape (-1 for a dynamic size).

Read with OpenVINO, which reads both IR and ONNX without compiling; recorded in the manifest, so the
runtime feeds each input as the graph expects (optimum's ONNX export, for one, takes a scalar timestep).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openvino as ov

from sdcpu.errors import SdcpuError


def read_inputs(path: Path) -> dict[str, dict[str, Any]]:
    """{input name: {"dtype": numpy's name, "shape": [size or -1, ...]}} of the graph at `path`."""
    return inputs_of(read_graph(path), path)


def read_graph(path: Path) -> ov.Model:
    """The graph at `path` (IR or ONNX), read without compiling."""
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as err:
        raise SdcpuError(f"OpenVINO cannot read {path}: {err}") from err


def inputs_of(model: ov.Model, path: Path) -> dict[str, dict[str, Any]]:
    """`read_inputs` of a graph already read from `path`."""
    inputs = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic:
            raise SdcpuError(f"the input {port.get_any_name()} of {path} has no fixed rank; export it again")
        sizes = [d.get_length() if d.is_static else -1 for d in shape]
        inputs[port.get_any_name()] = {"dtype": port.get_element_type().to_dtype().name, "shape": sizes}
    return inputs
