"""The tiny decoder (TAESD, diffusers' AutoencoderTiny) converted with --tiny-vae and run with
--decoder tiny: each exported network against PyTorch, and the pipeline against diffusers with the
same AutoencoderTiny, on both backends at f32 compute."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.format.manifest import Manifest  # noqa: E402
from sdcpu.runtime.engines import load_model  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

BACKENDS = [("openvino", "sd1_openvino"), ("onnxruntime", "sd1_onnx")]


@pytest.mark.parametrize(("backend", "folder"), BACKENDS)
def test_the_tiny_networks_match_pytorch(backend, folder, tiny_vae, request):
    from diffusers import AutoencoderTiny

    folder = request.getfixturevalue(folder)
    reference = AutoencoderTiny.from_pretrained(tiny_vae).eval()
    manifest = Manifest.load(folder)
    assert manifest.components["tiny_vae_decoder"]["scaling_factor"] == 1.0
    options = LoadOptions(backend=backend, compute_precision="f32", cache=False).resolve(manifest)
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 12), dtype=np.float32)
    image = np.random.default_rng(1).uniform(-1, 1, (1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        decoded = reference.decode(torch.from_numpy(latents)).sample.numpy()
        encoded = reference.encode(torch.from_numpy(image)).latents.numpy()
    got_decoded = load_model(manifest.graph_path(folder, "tiny_vae_decoder"), options)(latent_sample=latents)
    got_encoded = load_model(manifest.graph_path(folder, "tiny_vae_encoder"), options)(sample=image)
    assert np.abs(got_decoded - decoded).max() <= 1e-4 and np.abs(got_encoded - encoded).max() <= 1e-4


@pytest.mark.parametrize(("backend", "folder"), BACKENDS)
def test_decoder_tiny_matches_diffusers_with_autoencoder_tiny(backend, folder, tiny_sd1, tiny_vae, request):
    from diffusers import AutoencoderTiny

    folder = request.getfixturevalue(folder)
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    options = LoadOptions(backend=backend, compute_precision="f32", decoder="tiny")
    ours = Pipeline.load(folder, options)("a red circle", steps=6, seed=2, scheduler="ddim", latents=latents).array
    pipe = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    pipe.vae = AutoencoderTiny.from_pretrained(tiny_vae).eval()
    theirs = pipe("a red circle", num_inference_steps=6, latents=torch.from_numpy(latents), output_type="np").images
    full = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    other = full("a red circle", steps=6, seed=2, scheduler="ddim", latents=latents).array
    assert float(np.abs(ours - theirs).max()) <= 2 / 255
    assert float(np.abs(ours - other).max()) > 0.1  # the tiny decoder really decoded (random weights differ)


def test_decoder_tiny_without_one_is_a_clear_error(tmp_path):
    import json
    import shutil

    from sdcpu.models import CONVERTED

    folder = shutil.copytree(CONVERTED, tmp_path / "model")  # the demo ships a tiny decoder: take it out
    data = json.loads((folder / "sdcpu.json").read_text())
    for component in ("tiny_vae_decoder", "tiny_vae_encoder"):
        data["components"].pop(component)
        shutil.rmtree(folder / component)
    data["files"] = {rel: info for rel, info in data["files"].items() if not rel.startswith("tiny_vae_")}
    (folder / "sdcpu.json").write_text(json.dumps(data))
    with pytest.raises(SdcpuError, match="no tiny decoder; convert the checkpoint with --tiny-vae"):
        Pipeline.load(folder, LoadOptions(decoder="tiny"))


def test_a_tiny_vae_for_other_latents_is_refused(tiny_sd1, tmp_path):
    from diffusers import AutoencoderTiny

    from sdcpu.export.convert import convert

    AutoencoderTiny(**{**tiny.TINY_VAE, "latent_channels": 16}).save_pretrained(tmp_path / "taesd3")
    with pytest.raises(SdcpuError, match="makes 16-channel latents; this model's have 4"):
        convert(str(tiny_sd1), tmp_path / "out", tiny_vae=tmp_path / "taesd3", progress=lambda _: None)
    assert not (tmp_path / "out").exists()
