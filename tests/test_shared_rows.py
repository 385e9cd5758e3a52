"""Shared rows (runtime/engines/passes/shared_rows.py): in a guided batch, what reads only the inputs both
halves share is computed once. The rewritten graph gives the plain graph's outputs; nodes that mix rows
read the repeated results; a graph it cannot rewrite is compiled as read; and the pipeline, the ControlNet
hook and ONNX Runtime feed `Repeated` inputs."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
from PIL import Image, ImageDraw

from sdcpu import Pipeline
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.engines import Repeated, load_model
from sdcpu.runtime.engines.passes import shared_rows
from sdcpu.runtime.engines.passes.shared_rows import NotShareable, share_rows
from sdcpu.runtime.options import LoadOptions

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it


def _run(model: ov.Model, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    compiled = ov.Core().compile_model(model, "CPU", F32)
    result = compiled(inputs)
    return [result[out] for out in compiled.outputs]


def _guided_unet_inputs(model: ov.Model, folder, size: int = 16) -> dict[str, np.ndarray]:
    # Both halves share the sample and timestep; the prompts differ.
    rng = np.random.default_rng(0)
    config = json.loads((folder / "unet" / "config.json").read_text())
    channels, text = config["in_channels"], config["cross_attention_dim"]
    sample = rng.standard_normal((1, channels, size, size)).astype(np.float32)
    timestep = np.array([500, 500], model.input("timestep").get_element_type().to_dtype())
    return {
        "sample": np.concatenate([sample, sample]),
        "timestep": timestep,
        "encoder_hidden_states": rng.standard_normal((2, 7, text)).astype(np.float32),
    }


def _reshaped(path, inputs: dict[str, np.ndarray]) -> ov.Model:
    model = ov.Core().read_model(path)
    model.reshape({name: list(value.shape) for name, value in inputs.items()})
    return model


def _half(inputs: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {name: value[: len(value) // 2] if name in names else value for name, value in inputs.items()}


def test_a_unet_computes_its_shared_part_once_and_gives_the_same_outputs(sd1_openvino):
    path = sd1_openvino / "unet" / "openvino_model.xml"
    inputs = _guided_unet_inputs(ov.Core().read_model(path), sd1_openvino)
    plain = _run(_reshaped(path, inputs), inputs)
    model = _reshaped(path, inputs)
    names = ("sample", "timestep")
    assert share_rows(model, names) > 10
    assert model.input("sample").get_partial_shape()[0].get_length() == 1
    # The first self-attention reads the sample alone: it is computed on one row.
    attentions = [op for op in model.get_ordered_ops() if op.get_type_name() == "ScaledDotProductAttention"]
    assert attentions[0].get_input_partial_shape(0)[0].get_length() == 1
    assert attentions[1].get_input_partial_shape(0)[0].get_length() == 2  # the cross-attention reads the prompts
    shared = _run(model, _half(inputs, names))
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _toy() -> ov.Model:
    # sample [4, 4] and text [4, 4]: rows 0-1 and 2-3 share the sample.
    sample = ops.parameter([4, 4], np.float32, name="sample")
    text = ops.parameter([4, 4], np.float32, name="text")
    shared = ops.sigmoid(ops.add(sample, ops.constant(np.float32(1))))
    reshaped = ops.reshape(shared, ops.constant(np.array([8, -1], np.int64)), special_zero=False)
    mixed = ops.softmax(shared, 0)  # over the rows: must read them all
    moved = ops.transpose(shared, ops.constant(np.array([1, 0], np.int64)))  # rows second: not shared
    outputs = [ops.multiply(shared, text), reshaped, mixed, moved]
    return ov.Model(outputs, [sample, text])


def test_nodes_that_mix_or_move_rows_read_the_repeated_rows():
    rng = np.random.default_rng(1)
    half = rng.standard_normal((2, 4)).astype(np.float32)
    inputs = {"sample": np.concatenate([half, half]), "text": rng.standard_normal((4, 4)).astype(np.float32)}
    plain = _run(_toy(), inputs)
    model = _toy()
    assert share_rows(model, ("sample",)) == 4  # the input, the addition, the sigmoid and the row-block reshape
    shared = _run(model, _half(inputs, ("sample",)))
    for a, b in zip(shared, plain, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_graph_with_nothing_to_share_is_refused():
    sample = ops.parameter([4, 3], np.float32, name="sample")
    model = ov.Model([ops.softmax(sample, 0)], [sample])
    with pytest.raises(NotShareable, match="no node"):
        share_rows(model, ("sample",))
    odd = ops.parameter([3, 3], np.float32, name="sample")
    with pytest.raises(NotShareable, match="even"):
        share_rows(ov.Model([ops.relu(odd)], [odd]), ("sample",))


def _disc(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).ellipse((12, 16, 50, 48), outline=(255, 255, 255), width=2)
    return image


def test_a_guided_controlnet_generation_shares_the_controlnets_rows(sd1_openvino, controlnets_openvino, monkeypatch):
    options = LoadOptions(compute_precision="f32", cache=False)
    control = ControlSetting.of(controlnets_openvino[0], _disc(), 0.9)
    rewrite, shared = share_rows, []

    def counted(model, names):
        shared.append((tuple(sorted(names)), rewrite(model, names)))

    monkeypatch.setattr(shared_rows, "share_rows", counted)
    image = Pipeline.load(sd1_openvino, options)("a cat", steps=3, seed=4, guidance=5.0, controls=[control]).array
    # The ControlNet only (the UNet is fed whole), compiled once, with its sample, timestep and image repeated.
    assert len(shared) == 1 and shared[0][0] == ("controlnet_cond", "sample", "timestep") and shared[0][1] > 10
    Pipeline.load(sd1_openvino, options)("a cat", steps=3, seed=4, guidance=1.0, controls=[control])
    assert len(shared) == 1  # unguided: no halves, nothing shared

    def refuse(model, names):
        raise NotShareable("refused for the test")

    monkeypatch.setattr(shared_rows, "share_rows", refuse)
    whole = Pipeline.load(sd1_openvino, options)("a cat", steps=3, seed=4, guidance=5.0, controls=[control]).array
    assert np.abs(image.astype(int) - whole.astype(int)).max() <= 1  # the same image, fed whole


def test_onnx_runtime_feeds_repeated_inputs_whole(sd1_onnx):
    model = load_model(sd1_onnx / "unet" / "model.onnx", LoadOptions(backend="onnxruntime"))
    inputs = _guided_unet_inputs(ov.Core().read_model(sd1_onnx / "unet" / "model.onnx"), sd1_onnx)
    repeated = {name: Repeated(value[:1]) for name, value in inputs.items() if name != "encoder_hidden_states"}
    np.testing.assert_array_equal(model(**inputs), model(**(inputs | repeated)))


def test_a_graph_of_dynamic_shapes_is_refused():
    sample = ops.parameter([-1, 3], np.float32, name="sample")
    with pytest.raises(NotShareable, match="static"):
        share_rows(ov.Model([ops.relu(sample)], [sample]), ("sample",))
