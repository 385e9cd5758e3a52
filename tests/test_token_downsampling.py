"""Token downsampling (runtime/engines/passes/token_downsampling.py): the rewritten attention is exactly
attention over the picked keys and values, the picks are PyTorch's nearest-exact ones, and the option
reaches the UNet graphs, the cache key and the PNG metadata."""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError
from sdcpu.runtime.engines.passes.token_downsampling import downsample_self_attention, nearest_exact
from sdcpu.runtime.options import LoadOptions

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it


@pytest.mark.parametrize(("size", "factor"), [(64, 2), (65, 2), (7, 3), (5, 1)])
@pytest.mark.parity
def test_picked_tokens_are_pytorchs_nearest_exact(size, factor):
    torch = pytest.importorskip("torch")
    grid = torch.arange(size, dtype=torch.float32).reshape(1, 1, size)
    count = -(-size // factor)
    expected = torch.nn.functional.interpolate(grid, size=count, mode="nearest-exact")
    assert nearest_exact(size, factor) == expected.flatten().int().tolist()


def _attention_model(height: int, width: int, heads: int = 2, dim: int = 8) -> ov.Model:
    # A latent of height x width, one self-attention over its tokens and one cross-attention (8 tokens).
    sample = ops.parameter([1, 4, height, width], np.float32, name="sample")
    q, k, v = (ops.parameter([1, heads, height * width, dim], np.float32, name=n) for n in "qkv")
    text = ops.parameter([1, heads, 8, dim], np.float32, name="text")
    self_attention = ops.scaled_dot_product_attention(q, k, v, causal=False)
    cross = ops.scaled_dot_product_attention(q, text, text, causal=False)
    return ov.Model([self_attention, cross, ops.relu(sample)], [sample, q, k, v, text])


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize(("height", "width", "factor"), [(4, 6, 2), (5, 7, 2), (6, 6, 3)])
def test_rewritten_self_attention_attends_to_the_picked_tokens(height, width, factor):
    model = _attention_model(height, width)
    rng = np.random.default_rng(0)
    inputs = {p.get_any_name(): rng.standard_normal(tuple(p.get_shape())).astype(np.float32) for p in model.inputs}
    assert downsample_self_attention(model, factor) == 1  # the self-attention, not the cross-attention
    out = ov.Core().compile_model(model, "CPU", F32)(inputs)
    picked = [r * width + c for r in nearest_exact(height, factor) for c in nearest_exact(width, factor)]
    q, k, v = inputs["q"], inputs["k"][:, :, picked], inputs["v"][:, :, picked]
    np.testing.assert_allclose(out[0], _attention(q, k, v), atol=1e-5)
    text = inputs["text"]
    np.testing.assert_allclose(out[1], _attention(q, text, text), atol=1e-5)  # unchanged


def test_only_the_level_with_the_most_tokens_is_rewritten():
    model = _attention_model(4, 4)
    small = ops.parameter([1, 2, 4, 8], np.float32, name="small")  # a 2x2 level below
    model.add_parameters([small])
    model.add_results([ops.result(ops.scaled_dot_product_attention(small, small, small, causal=False))])
    assert downsample_self_attention(model, 2) == 1
    assert downsample_self_attention(_attention_model(4, 4), 1) == 0  # factor 1: off


def test_demo_pipeline_with_token_downsampling(tmp_path):
    def generate(factor: int):
        pipe = Pipeline.load(
            None, LoadOptions(cache_dir=tmp_path, token_downsampling=factor, compute_precision="f32")
        )  # demo: 8x8 top attention level
        return pipe("a red circle", steps=4, seed=0)

    fast, exact = generate(2), generate(1)
    # text encoder, VAE decoder and the UNet twice: the factor is in its blob's key
    assert len(list(tmp_path.glob("*.blob"))) == 4
    difference = np.abs(fast.array - exact.array)
    assert difference.max() > 1e-3 and difference.mean() < 0.05  # an approximation, not another image
    saved = fast.save(tmp_path / "a.png")[0]
    from PIL import Image

    assert Image.open(saved).text["token_downsampling"] == "2"


def test_token_downsampling_needs_openvino_graphs(sd1_onnx):
    with pytest.raises(SdcpuError, match="token downsampling needs an OpenVINO folder"):
        Pipeline.load(sd1_onnx, LoadOptions(token_downsampling=2, cache=False, compute_precision="f32"))
    with pytest.raises(SdcpuError, match="token_downsampling must be at least 1"):
        Pipeline.load(None, LoadOptions(token_downsampling=0, cache=False, compute_precision="f32"))
