"""Weights held in float16 while a model is exported (export/half_weights.py): the same function, half the
memory, and OpenVINO's compressed-weight pattern in the traced graph."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.parity

from sdcpu.export.half_weights import MIN_ELEMENTS, hold_weights_in_fp16, holds_half_weights  # noqa: E402


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 8 * 8, 64),
        torch.nn.GELU(),
        torch.nn.Linear(64, 8),  # 512 weights: below MIN_ELEMENTS, kept float32
    ).eval()


def test_weights_are_stored_in_float16_and_the_function_is_the_rounded_one():
    model, reference = _model(), _model()
    with torch.no_grad():
        for layer in reference:  # the model the held one must equal: each large weight rounded to fp16
            if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d) and layer.weight.numel() >= MIN_ELEMENTS:
                layer.weight.copy_(layer.weight.half().float())
    hold_weights_in_fp16(model)
    stored = {name: str(t.dtype) for name, t in model.state_dict().items() if name.endswith("original")}
    assert stored == {
        "0.parametrizations.weight.original": "torch.float16",
        "2.parametrizations.weight.original": "torch.float16",
    }
    assert model[4].weight.dtype == torch.float32 and model[4].weight.numel() < MIN_ELEMENTS
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert model(x).dtype == torch.float32
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_the_traced_graph_has_float16_constants_converted_to_float32():
    model = hold_weights_in_fp16(_model())
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        graph = ov.convert_model(model, example_input=x)
        expected = model(x).numpy()
    f16 = [op for op in graph.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.f16]
    assert len(f16) == 2
    assert all(
        {target.get_node().get_type_name() for target in op.output(0).get_target_inputs()} == {"Convert"} for op in f16
    )
    assert [p.get_element_type() for p in graph.inputs] == [ov.Type.f32]
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x.numpy())[0], expected, rtol=0, atol=1e-5)


def test_only_openvino_precisions_below_fp32_hold_half_weights():
    assert [holds_half_weights("openvino", p) for p in ("fp32", "fp16", "int8", "int8-hybrid", "int4")] == [
        False,
        True,
        True,
        True,
        True,
    ]
    assert not holds_half_weights("onnx", "fp16") and not holds_half_weights("onnx", "int8")
