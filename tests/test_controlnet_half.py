"""ControlNet's residuals handed to the UNet in float16 where both compute in bf16 or f16
(runtime/controlnet/residuals.py, networks.py): the UNet's residual inputs are float16 and add the same as
float32 ones of the same values; the ControlNet gives float16 outputs; at f32 compute, and on ONNX
Runtime, everything stays float32; at bf16 the image is the float32 handover's within bf16's rounding."""

from __future__ import annotations

import json

import numpy as np
import openvino as ov
import pytest
from PIL import Image, ImageDraw

from sdcpu import Pipeline
from sdcpu.format.controlnet import ControlNetManifest
from sdcpu.runtime.controlnet import residuals
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.precision import openvino_capabilities

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it
NATIVE_BF16 = "BF16" in openvino_capabilities("CPU")


def _disc(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).ellipse((12, 16, 50, 48), outline=(255, 255, 255), width=2)
    return image


def _unet(folder, channels: list[int], half: bool) -> tuple[ov.Model, dict[str, np.ndarray]]:
    model = ov.Core().read_model(folder / "unet" / "openvino_model.xml")
    text = json.loads((folder / "unet" / "config.json").read_text())["cross_attention_dim"]
    model.reshape({"sample": [2, 4, 8, 8], "timestep": [2], "encoder_hidden_states": [2, 7, text]})
    residuals.add_residual_inputs(model, channels, half)
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "timestep": np.array([10, 10], model.input("timestep").get_element_type().to_dtype()),
        "encoder_hidden_states": rng.standard_normal((2, 7, text)).astype(np.float32),
    }
    for port in model.inputs:
        name = port.get_any_name()
        if name not in inputs:  # values float16 holds exactly, so both handovers add the same numbers
            shape = list(port.get_partial_shape().to_shape())
            inputs[name] = rng.standard_normal(shape).astype(np.float16).astype(port.get_element_type().to_dtype())
    return model, inputs


def test_half_residual_inputs_add_as_float32_ones_do(sd1_openvino, controlnets_openvino):
    channels = ControlNetManifest.load(controlnets_openvino[0]).residual_channels
    outputs = {}
    for half in (False, True):
        model, inputs = _unet(sd1_openvino, channels, half)
        declared = {port.get_any_name(): port.get_element_type() for port in model.inputs}
        assert declared[residuals.MID_NAME] == (ov.Type.f16 if half else ov.Type.f32)
        outputs[half] = ov.Core().compile_model(model, "CPU", F32)(inputs)[0]
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-6)


@pytest.mark.parametrize(("compute", "backend"), [("f32", "openvino"), ("f32", "onnxruntime")])
def test_float32_compute_hands_over_float32(sd1_openvino, sd1_onnx, controlnets_openvino, compute, backend):
    folder = sd1_openvino if backend == "openvino" else sd1_onnx
    pipe = Pipeline.load(folder, LoadOptions(compute_precision=compute, backend=backend, cache=False))
    assert not pipe.controlnets.half and pipe.controlnets.dtype is np.float32


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (no BF16 in OpenVINO's capabilities)")
def test_at_bf16_residuals_are_handed_over_in_float16(sd1_openvino, controlnets_openvino):
    control = ControlSetting.of(controlnets_openvino[0], _disc(), 0.9)
    options = LoadOptions(compute_precision="bf16", cache=False)
    pipe = Pipeline.load(sd1_openvino, options)
    assert pipe.controlnets.half
    image = pipe("a cat", steps=3, seed=4, controls=[control]).array
    (_, network), *_ = pipe.controlnets._opened.values()
    assert all(port.get_element_type() == ov.Type.f16 for port in network._compiled.outputs)  # type: ignore[attr-defined]
    full = Pipeline.load(sd1_openvino, options)
    full.controlnets.half = False  # as before: float32 handover
    reference = full("a cat", steps=3, seed=4, controls=[control]).array
    assert np.abs(image.astype(int) - reference.astype(int)).max() <= 3  # bf16 computes both: its rounding
