"""depth2img against diffusers' StableDiffusionDepth2ImgPipeline (<= 2/255 per pixel, f32 compute, both
backends), with the converted DPT and with a given depth map; the depth's effect; bad depth maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError
from sdcpu.runtime.components.depth_estimator import resize_bicubic
from sdcpu.runtime.options import LoadOptions

PIXEL_TOLERANCE = 2 / 255
F32 = LoadOptions(compute_precision="f32")


def _image(seed: int = 5) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _ramp(size: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0.0, 10.0, size, dtype=np.float32), (size, 1))  # nearer to the right


def _diffusers(folder, monkeypatch, seed: int, noise: np.ndarray, **call):
    import diffusers
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_depth2img as depth_module
    import torch

    draws = iter([np.random.default_rng(seed).standard_normal((1, 4, 8, 8), dtype=np.float32), noise])

    def queued(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(next(draws))

    monkeypatch.setattr(vae_module, "randn_tensor", queued)  # the image's latent sample
    monkeypatch.setattr(depth_module, "randn_tensor", queued)  # the noise added at the start
    pipe = diffusers.StableDiffusionDepth2ImgPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe("a blue square", image=_image(), output_type="np", num_inference_steps=8, strength=0.7, **call).images


@pytest.mark.parity
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("depth", ["estimated", "given"])
def test_depth2img_matches_diffusers(backend, depth, tiny_depth, depth_openvino, depth_onnx, monkeypatch):
    import torch

    folder = depth_openvino if backend == "openvino" else depth_onnx
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    given = _ramp() if depth == "given" else None
    ours = pipe.depth2img("a blue square", _image(), depth_map=given, steps=8, seed=4, strength=0.7, latents=noise)
    assert ours.settings.depth == depth
    call = {"depth_map": torch.from_numpy(_ramp()[None])} if depth == "given" else {}
    theirs = _diffusers(tiny_depth, monkeypatch, 4, noise, **call)
    diff = float(np.abs(ours.array - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


@pytest.mark.parity
def test_the_depth_matters(depth_openvino):
    """Control: another depth map gives another image."""
    pipe = Pipeline.load(depth_openvino, F32)
    near_right, near_left = (
        pipe.depth2img("a blue square", _image(), depth_map=d, steps=4, seed=1).array
        for d in (_ramp(), _ramp()[:, ::-1])
    )
    assert float(np.abs(near_right - near_left).max()) > 0.05


def test_resize_matches_torch_bicubic():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 37, 29)).astype(np.float32)
    for size in [(8, 8), (64, 48), (5, 90)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(x)[:, None], size=size, mode="bicubic")[:, 0]
        assert np.abs(resize_bicubic(x, *size) - expected.numpy()).max() < 1e-4


@pytest.mark.parity
@pytest.mark.parametrize(
    "depth, message",
    [
        (np.zeros((2, 64, 64)), "must be one 2-D map"),
        (np.zeros((64, 32)), "the depth map is 32x64 and the image 64x64"),
        (np.full((64, 64), np.nan), "NaN or Inf"),
        (np.ones((64, 64)), "the depth map is flat"),
    ],
)
def test_bad_depth_maps_are_refused(depth_openvino, depth, message):
    pipe = Pipeline.load(depth_openvino, F32)
    with pytest.raises(SdcpuError, match=message):
        pipe.depth2img("a cat", _image(), depth_map=depth, steps=2)


@pytest.mark.parity
def test_depth_map_files(depth_openvino, tmp_path):
    """A 16-bit PNG and a .npy give the same image as the array; a text file is refused."""
    pipe = Pipeline.load(depth_openvino, F32)
    ramp = (_ramp() * 6000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "depth.png")
    np.save(tmp_path / "depth.npy", ramp.astype(np.float32))
    (tmp_path / "text.npy").write_text("not an array")
    runs = [
        pipe.depth2img("a cat", _image(), depth_map=d, steps=2, seed=3).array
        for d in (ramp.astype(np.float32), tmp_path / "depth.png", tmp_path / "depth.npy")
    ]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])
    with pytest.raises(SdcpuError, match="cannot read the depth map"):
        pipe.depth2img("a cat", _image(), depth_map=tmp_path / "text.npy", steps=2)


@pytest.mark.parity
def test_depth2img_command(depth_openvino, tmp_path):
    from typer.testing import CliRunner

    from sdcpu.cli.main import app

    _image().save(tmp_path / "in.png")
    np.save(tmp_path / "depth.npy", _ramp())
    args = ["depth2img", "a cat", "--image", str(tmp_path / "in.png"), "--model", str(depth_openvino)]
    args += ["--depth-map", str(tmp_path / "depth.npy"), "--out", str(tmp_path / "out.png"), "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").text["depth"] == "given"
    refused = CliRunner().invoke(
        app, [*args[:-4], "--depth-map", str(tmp_path / "none.npy"), "--out", str(tmp_path / "x.png")]
    )
    assert refused.exit_code == 2 and "cannot read the depth map" in refused.output
    assert not (tmp_path / "x.png").exists()
