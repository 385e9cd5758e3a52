"""Winograd convolutions (runtime/engines/passes/winograd.py): the rewritten graph equals the direct one within
float32 rounding, and only the convolutions it can compute are rewritten."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sdcpu.runtime.engines.passes.winograd import rewrite_convolutions, tile_size

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it


def _conv_model(
    shape: tuple[int, int, int, int], out_ch: int, kernel: int = 3, stride: int = 1, fp16: bool = False
) -> tuple[ov.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((out_ch, shape[1], kernel, kernel)) / np.sqrt(kernel * kernel * shape[1])
    x = ops.parameter(list(shape), np.float32, name="sample")
    w = ops.constant(weights.astype(np.float16 if fp16 else np.float32))
    w = ops.convert(w, "f32") if fp16 else w  # as an fp16 folder stores them
    pad = kernel // 2
    y = ops.convolution(x, w, [stride, stride], [pad, pad], [pad, pad], [1, 1])
    y = ops.relu(ops.add(y, ops.constant(rng.standard_normal((1, out_ch, 1, 1)).astype(np.float32))))
    return ov.Model([y], [x]), rng.standard_normal(shape).astype(np.float32)


def _run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return ov.Core().compile_model(model, "CPU", F32)(x)[0]


def _op_types(model: ov.Model) -> set[str]:
    return {op.get_type_name() for op in model.get_ordered_ops()}


@pytest.mark.parametrize(
    ("shape", "out_ch", "fp16", "m"),
    [((2, 32, 16, 16), 48, False, 2), ((1, 40, 32, 36), 32, False, 4), ((2, 32, 32, 32), 64, True, 4)],
)
def test_rewritten_convolution_equals_direct(shape, out_ch, fp16, m):
    model, x = _conv_model(shape, out_ch, fp16=fp16)
    direct = _run(model, x)
    assert tile_size(shape[2], shape[3], min(shape[1], out_ch)) == m
    assert rewrite_convolutions(model) == 1
    assert "Convolution" not in _op_types(model) and "DepthToSpace" in _op_types(model)
    winograd = _run(model, x)
    assert winograd.shape == direct.shape
    # float32 rounding: the transforms add a few ulps of the output's scale (2e-5 measured for F(4x4, 3x3))
    np.testing.assert_allclose(winograd, direct, rtol=0, atol=1e-4 * float(np.abs(direct).max()))


@pytest.mark.parametrize(
    ("shape", "out_ch", "kernel", "stride"),
    [
        ((1, 32, 16, 16), 32, 1, 1),  # 1x1
        ((1, 32, 16, 16), 32, 3, 2),  # stride 2 (downsampling)
        ((1, 4, 32, 32), 32, 3, 1),  # thin: conv_in
        ((1, 64, 8, 8), 64, 3, 1),  # small map: reading U costs more than the multiplications saved
        ((1, 32, 15, 15), 32, 3, 1),  # odd size: no whole tiles
    ],
)
def test_other_convolutions_stay_direct(shape, out_ch, kernel, stride):
    model, _ = _conv_model(shape, out_ch, kernel, stride)
    assert rewrite_convolutions(model) == 0
    assert "Convolution" in _op_types(model)


def test_pipeline_with_winograd_matches_direct_convolutions(tmp_path):
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    def generate(winograd: bool) -> np.ndarray:
        # the demo model: 16x16 latents, 32 channels
        pipe = Pipeline.load(None, LoadOptions(cache_dir=tmp_path, winograd=winograd, compute_precision="f32"))
        return pipe("a red circle", steps=4, seed=0).array

    fast, direct = generate(True), generate(False)
    # the UNet compiled twice (the option is part of its blob's key), the other networks once: they stay direct
    assert len(list(tmp_path.glob("*.blob"))) == 4
    assert float(np.abs(fast - direct).max()) <= 1e-4  # 6e-6 measured: the same 8-bit image
    assert not np.array_equal(fast, direct)  # the rewrite did happen
