"""DeepCache: the shallow UNet pass, given the deep features of the same step, is the whole UNet; the
pipeline reuses them between full steps, deterministically, and refuses what it cannot run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.parity
import tiny  # noqa: E402

# The tiny UNet has cross-attention in its outer level; this one has none there (as the demo model).
PLAIN_OUTER = dict(
    tiny.UNET,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
)


@pytest.mark.parametrize("config", [tiny.UNET, PLAIN_OUTER], ids=["cross-attention-outer", "plain-outer"])
def test_shallow_pass_with_fresh_features_is_the_whole_unet(config):
    from diffusers import UNet2DConditionModel

    from sdcpu.export.families.sd import unet_shallow_spec, unet_spec

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    full, shallow = unet_spec(unet), unet_shallow_spec(unet)
    with torch.no_grad():
        reference = unet(**{k: v for k, v in full.inputs.items()}).sample
        out, deep = full.module(**full.inputs)
        assert deep.shape == shallow.inputs["deep_features"].shape
        again = shallow.module(**{**shallow.inputs, **full.inputs, "deep_features": deep})
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    torch.testing.assert_close(again, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("converted", ["openvino", "onnx"], indirect=True)
def test_exported_shallow_pass_matches_the_exported_unet(converted):
    pipe = Pipeline.load(converted, LoadOptions(compute_precision="f32"))
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    eps, deep = pipe.unet.outputs(**inputs)
    assert pipe.unet_shallow is not None
    again = pipe.unet_shallow(**inputs, deep_features=deep)
    np.testing.assert_allclose(again, eps, rtol=1e-4, atol=1e-4)


def test_deep_cache_generates_deterministically_near_the_exact_image(sd1_openvino):
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    exact = pipe("a cat", steps=6, seed=3).array
    first = pipe("a cat", steps=6, seed=3, deep_cache=3)
    second = pipe("a cat", steps=6, seed=3, deep_cache=3).array
    np.testing.assert_array_equal(first.array, second)
    assert first.settings.deep_cache == 3 and json.loads(first.settings.png_metadata(0)["sdcpu"])["deep_cache"] == 3
    difference = np.abs(first.array - exact).mean()
    assert 0 < difference < 0.1, difference  # approximate: changed, not wrecked
    low = Pipeline.load(sd1_openvino, LoadOptions(low_memory=True, compute_precision="f32"))(
        "a cat", steps=6, seed=3, deep_cache=3
    ).array
    np.testing.assert_allclose(low, first.array, atol=2e-3)


def test_deep_cache_is_refused_where_it_cannot_run(sd1_openvino, tmp_path):
    with pytest.raises(SdcpuError, match="deep_cache must be at least 1"):
        Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))("a cat", steps=2, deep_cache=0)
    damaged = tmp_path / "damaged"
    shutil.copytree(sd1_openvino, damaged)
    manifest = json.loads((damaged / "sdcpu.json").read_text())
    del manifest["components"]["unet_shallow"]
    (damaged / "sdcpu.json").write_text(json.dumps(manifest))
    pipe = Pipeline.load(damaged, LoadOptions(compute_precision="f32"))  # txt2img needs no unet_shallow
    with pytest.raises(SdcpuError, match="no unet_shallow, which DeepCache"):
        pipe("a cat", steps=2, deep_cache=2)
