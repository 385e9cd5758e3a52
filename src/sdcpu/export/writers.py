"""Write an ExportSpec as OpenVINO IR or ONNX at a given precision; one function per format.

fp32 keeps everything in float32. fp16 stores the weights in float16 and computes in float32
(size only): OpenVINO's `compress_to_fp16`; for ONNX, each large float32 initializer is stored as
float16 followed by a Cast node, which ONNX Runtime folds back to float32 when it loads the model.
The int8 and int4 precisions are described in `quantize.py`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdcpu.export.families.base import ExportSpec
from sdcpu.export.folders import save_openvino
from sdcpu.export.quantize import NNCF_RECIPE, HybridRecipe, compress_openvino, store_onnx_weights_int8

ONNX_OPSET = 17
ONNX_DATA = "model.onnx_data"
# Records UNet inputs from the float model (int8-hybrid only).
Calibrate = Callable[[Any], list[dict[str, np.ndarray]]]


def write_openvino(
    spec: ExportSpec,
    folder: Path,
    precision: str,
    calibrate: Calibrate | None = None,
    recipe: HybridRecipe = NNCF_RECIPE,
) -> list[str]:
    import openvino as ov
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.no_grad():
        # Traced without torch.jit.trace's check, which runs the model twice more to compare and only warns
        # (14% of a tiny pipeline's conversion); the exported graphs are compared with PyTorch in the tests.
        trace = {"check_trace": False}
        decoder = TorchScriptPythonDecoder(spec.module, example_input=spec.inputs, trace_kwargs=trace)
        model = ov.convert_model(decoder, example_input=spec.inputs)
    for port, name in zip(model.inputs, spec.inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, spec.output_names, strict=True):
        port.get_tensor().set_names({name})
    samples = calibrate(model) if calibrate is not None else []
    # Before compression: quantization must see the graph's real outputs only (a few-step recipe keeps the
    # last convolution before each output in float, and an inner tensor is not an output).
    for result in [r for r in model.get_results() if r.output(0).get_names() & set(spec.inner_outputs)]:
        model.remove_result(result)  # the tensor keeps its name inside the graph
    model = compress_openvino(model, precision, samples, recipe)
    for name in spec.int64_inputs:
        _store_as_int64(model, name)
    model.set_rt_info(precision, ["sdcpu", "precision"])
    save_openvino(model, folder / "openvino_model.xml", compress_to_fp16=precision == "fp16")
    return ["openvino_model.xml", "openvino_model.bin"]


def write_onnx(
    spec: ExportSpec,
    folder: Path,
    precision: str,
    calibrate: Calibrate | None = None,
    recipe: HybridRecipe = NNCF_RECIPE,  # int8-hybrid's; ONNX has no int8-hybrid
) -> list[str]:
    import onnx

    with tempfile.TemporaryDirectory(dir=folder) as tmp, torch.no_grad():
        traced = Path(tmp) / "traced.onnx"
        torch.onnx.export(
            spec.module,
            tuple(spec.inputs.values()),
            str(traced),
            input_names=list(spec.inputs),
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        model = onnx.load(str(traced))
    kept = [output for output in model.graph.output if output.name not in spec.inner_outputs]
    del model.graph.output[:]
    model.graph.output.extend(kept)  # the inner ones stay named as their nodes' outputs
    if precision == "fp16":
        _store_weights_fp16(model)
    elif precision == "int8":
        store_onnx_weights_int8(model)
    model.metadata_props.add(key="sdcpu.precision", value=precision)
    # External data keeps the graph under protobuf's 2 GB limit (an fp32 SD 1.5 UNet is 3.4 GB).
    target = folder / "model.onnx"
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=ONNX_DATA,
        size_threshold=1024,
    )
    onnx.checker.check_model(str(target))  # reloads graph and external data
    return ["model.onnx", ONNX_DATA]


def _store_as_int64(model, name: str) -> None:
    # A new int64 Parameter, converted to the old one's type for all that used it.
    import openvino as ov
    from openvino import opset13 as ops

    old = next(p for p in model.get_parameters() if name in p.output(0).get_names())
    new = ops.parameter(old.get_partial_shape(), ov.Type.i64, name=name)
    as_float = ops.convert(new, old.get_element_type())
    old.output(0).replace(as_float.output(0))
    model.replace_parameter(model.get_parameter_index(old), new)
    new.output(0).get_tensor().set_names({name})
    model.validate_nodes_and_infer_types()


def _store_weights_fp16(model, min_elements: int = 1024) -> None:
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or np.prod(init.dims) < min_elements:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
        name = init.name
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=name + "_cast"))
    nodes = casts + list(graph.node)  # topological order: casts first
    del graph.node[:]
    graph.node.extend(nodes)


WRITERS = {"openvino": write_openvino, "onnx": write_onnx}
