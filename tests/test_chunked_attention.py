"""Chunked attention (runtime/engines/passes/chunked_attention.py): slicing the queries changes nothing but
memory, and only graphs with FakeQuantize are sliced. The real int8-hybrid UNet is in test_quantize.py."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sdcpu.runtime.engines.passes.chunked_attention import split_queries

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it

SHAPE = (1, 2, 300, 8)  # batch, heads, tokens, head size: a 720 kB float32 score matrix
SLICE_BYTES = 2 * 300 * 4 * 64  # 64 queries a slice: 4 slices of 64 and one of 44


def _model(quantized: bool, causal: bool = False) -> ov.Model:
    q, k, v = (ops.parameter(list(SHAPE), np.float32, name=n) for n in "qkv")
    out = ops.scaled_dot_product_attention(q, k, v, causal=causal)
    if quantized:  # what the int8-hybrid export leaves around convolutions and linear layers
        low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
        out = ops.fake_quantize(out, low, high, low, high, 256)
    return ov.Model([out], [q, k, v])


def _attention_ops(model: ov.Model) -> int:
    return sum(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ordered_ops())


@pytest.mark.parametrize("causal", [False, True])
def test_sliced_attention_equals_whole_attention(causal):
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]
    whole = ov.Core().compile_model(_model(True, causal), "CPU", F32)(inputs)[0]
    model = _model(True, causal)
    split = split_queries(model, SLICE_BYTES)
    assert (split, _attention_ops(model)) == ((0, 1) if causal else (1, 5))  # causal masks are left whole
    np.testing.assert_allclose(ov.Core().compile_model(model, "CPU", F32)(inputs)[0], whole, rtol=0, atol=1e-6)


def test_graphs_without_fake_quantize_and_small_attentions_are_left_alone():
    model = _model(False)
    assert split_queries(model, SLICE_BYTES) == 0 and _attention_ops(model) == 1
    model = _model(True)
    assert split_queries(model) == 0 and _attention_ops(model) == 1  # 720 kB: under the 64 MB default
