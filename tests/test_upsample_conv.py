"""Upsampling convolutions (runtime/engines/passes/upsample_conv.py): a nearest 2x upsampling and a 3x3
convolution as four 2x2 convolutions of the smaller map equal the original within float32 rounding,
and only that pattern is rewritten. The real networks are covered by the parity tests, which run with
the pass on."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sdcpu.runtime.engines.passes.upsample_conv import rewrite_upsampling_convolutions

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it


def _model(
    shape: tuple[int, int, int, int],
    out_ch: int = 6,
    mode: str = "nearest",
    scale: float = 2.0,
    weights: str = "f32",
    quantized: bool = False,
) -> ov.Model:
    """x -> Interpolate (as PyTorch's F.interpolate exports it) -> [FakeQuantize] -> 3x3 conv -> bias."""
    rng = np.random.default_rng(1)
    x = ops.parameter(list(shape), np.float32, name="x")
    scales = ops.constant(np.array([scale, scale], np.float32))
    attrs = {"mode": mode, "shape_calculation_mode": "scales", "coordinate_transformation_mode": "asymmetric"}
    up = ops.interpolate(x, scales, **attrs, nearest_mode="floor", axes=ops.constant(np.array([2, 3], np.int64)))
    if quantized:
        low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
        up = ops.fake_quantize(up, low, high, low, high, 256)
    conv = ops.convolution(up, _weights(rng, (out_ch, shape[1], 3, 3), weights), [1, 1], [1, 1], [1, 1], [1, 1])
    out = ops.add(conv, ops.constant(rng.standard_normal((1, out_ch, 1, 1)).astype(np.float32)))
    return ov.Model([out], [x])


def _weights(rng: np.random.Generator, shape: tuple[int, ...], storage: str) -> ov.Node:
    """Float32 weights; fp16 ones with a Convert; or uint8 ones with NNCF's decompression (zero point
    and scale per output channel, in fp16), as an int8 VAE stores them."""
    if storage == "f32":
        return ops.constant(rng.standard_normal(shape).astype(np.float32))
    if storage == "f16":
        return ops.convert(ops.constant(rng.standard_normal(shape).astype(np.float16)), np.float32)
    per_channel = (shape[0], 1, 1, 1)
    q = ops.convert(ops.constant(rng.integers(0, 256, shape).astype(np.uint8)), np.float16)
    zero_point = ops.convert(ops.constant(rng.integers(100, 156, per_channel).astype(np.uint8)), np.float16)
    scale = ops.constant((rng.random(per_channel) * 0.02 + 0.01).astype(np.float16))
    return ops.convert(ops.multiply(ops.subtract(q, zero_point), scale), np.float32)


def _run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return ov.Core().compile_model(model, "CPU", F32)(x)[0]


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 16, 5, 7), (1, 64, 16, 12)])
@pytest.mark.parametrize("weights", ["f32", "f16", "u8"])
def test_four_small_convolutions_equal_the_upsampling_convolution(shape, weights):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = _run(_model(shape, weights=weights), x)
    model = _model(shape, weights=weights)
    assert rewrite_upsampling_convolutions(model) == 1
    kinds = [op.get_type_name() for op in model.get_ordered_ops()]
    assert "DepthToSpace" in kinds and kinds.count("Convolution") == 4
    out = _run(model, x)
    assert out.shape == reference.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    # The phase filters add up to 4 taps: float32 rounding of the sums, against outputs of order 10-30.
    np.testing.assert_allclose(out, reference, rtol=0, atol=2e-4 * np.abs(reference).max())
    # Every output phase differs from its neighbours: the interleaving is checked, not averaged away.
    assert not np.allclose(out[..., 0::2, :], out[..., 1::2, :])


@pytest.mark.parametrize(
    "variant",
    [{"mode": "linear"}, {"scale": 3.0}, {"quantized": True}],
    ids=["bilinear", "3x", "int8-inputs"],
)
def test_other_upsamplings_and_quantized_inputs_are_left_alone(variant):
    model = _model((1, 4, 8, 8), **variant)
    assert rewrite_upsampling_convolutions(model) == 0
    assert "DepthToSpace" not in [op.get_type_name() for op in model.get_ordered_ops()]
