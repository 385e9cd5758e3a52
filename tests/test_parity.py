"""Exported components and whole pipelines against PyTorch / diffusers on the same inputs.

Tolerances: per component, max abs diff <= 1e-4 at fp32; per pipeline, max abs pixel difference
<= 2/255 on float images in [0, 1].
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

import tiny  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuNotice  # noqa: E402
from sdcpu.format.manifest import Manifest  # noqa: E402
from sdcpu.runtime.components.unet import unet_interfaces  # noqa: E402
from sdcpu.runtime.engines import load_model  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

COMPONENT_TOLERANCE = 1e-4
PIXEL_TOLERANCE = 2 / 255
SCHEDULER_CLASSES = tiny.DIFFUSERS_SCHEDULERS


def _runtime(folder, component):
    manifest = Manifest.load(folder)
    options = LoadOptions(compute_precision="f32", cache=False).resolve(manifest)
    interface = unet_interfaces(manifest).get(component)  # as the pipeline loads it: a float32 timestep
    return load_model(manifest.graph_path(folder, component), options, interface=interface)


@pytest.mark.parametrize("converted", ["openvino", "onnx"], indirect=True)
def test_components_match_pytorch(converted, tiny_sd1):
    text_encoder, unet, vae = tiny.build_components()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tiny.TEXT["vocab_size"], size=(2, 77), dtype=np.int64)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    timestep = np.array([801.5, 801.5], dtype=np.float32)
    hidden = rng.standard_normal((2, 77, 32), dtype=np.float32)
    latent = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    image = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = {
            "text_encoder": text_encoder(torch.from_numpy(ids))[0].numpy(),
            "unet": unet(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(hidden)).sample.numpy(),
            "vae_decoder": vae.decode(torch.from_numpy(latent)).sample.numpy(),
            "vae_encoder": vae.encode(torch.from_numpy(image)).latent_dist.parameters.numpy(),
        }
    got = {
        "text_encoder": _runtime(converted, "text_encoder")(input_ids=ids),
        "unet": _runtime(converted, "unet")(sample=sample, timestep=timestep, encoder_hidden_states=hidden),
        "vae_decoder": _runtime(converted, "vae_decoder")(latent_sample=latent),
        "vae_encoder": _runtime(converted, "vae_encoder")(sample=image),
    }
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        diff = float(np.abs(got[name] - expected[name]).max())
        assert diff <= COMPONENT_TOLERANCE, f"{name}: max abs diff {diff:.2e}"


def _reference(folder, scheduler, latents, steps, guidance, monkeypatch, seed):
    class_name, overrides = SCHEDULER_CLASSES[scheduler]
    pipe = tiny.diffusers_pipeline(folder, class_name, **overrides)
    tiny.numpy_scheduler_noise(monkeypatch, seed)
    out = pipe(
        "a red circle on the left",
        negative_prompt="blurry",
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
    )
    return out.images


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("scheduler", list(SCHEDULER_CLASSES))
def test_pipeline_matches_diffusers(scheduler, backend, tiny_sd1, sd1_openvino, sd1_onnx, monkeypatch):
    folder = sd1_openvino if backend == "openvino" else sd1_onnx
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    steps, seed = 6, 11
    ours = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))(
        "a red circle on the left",
        negative_prompt="blurry",
        steps=steps,
        guidance=7.5,
        seed=seed,
        scheduler=scheduler,
        latents=latents,
    ).array
    theirs = _reference(tiny_sd1, scheduler, latents, steps, 7.5, monkeypatch, seed)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


def test_parity_detects_swapped_schedulers(tiny_sd1, sd1_openvino, monkeypatch):
    """The pipeline parity check has teeth: two schedulers give visibly different images."""
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))(
        "a red circle on the left", negative_prompt="blurry", steps=6, scheduler="euler", latents=latents, seed=11
    ).array
    theirs = _reference(tiny_sd1, "ddim", latents, 6, 7.5, monkeypatch, 11)
    assert float(np.abs(ours - theirs).max()) > 10 * PIXEL_TOLERANCE


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++2m"])
def test_sd2_v_prediction_matches_diffusers(scheduler, tiny_sd2v, sd2v_openvino, monkeypatch):
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(sd2v_openvino, LoadOptions(compute_precision="f32"))(
        "a red circle on the left", negative_prompt="blurry", steps=6, scheduler=scheduler, latents=latents, seed=2
    ).array
    theirs = _reference(tiny_sd2v, scheduler, latents, 6, 7.5, monkeypatch, 2)
    assert float(np.abs(ours - theirs).max()) <= PIXEL_TOLERANCE


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("scheduler", ["pndm", "euler", "dpm++2m"])
def test_img2img_matches_diffusers(scheduler, backend, tiny_sd1, sd1_openvino, sd1_onnx, monkeypatch):
    import diffusers
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    from PIL import Image

    folder = sd1_openvino if backend == "openvino" else sd1_onnx
    init = Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    seed = 4
    ours = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))(
        "a blue square", steps=10, seed=seed, scheduler=scheduler, init_image=init, strength=0.6, latents=noise
    ).array
    # diffusers draws (1) the VAE posterior sample, (2) the noise added at the start; feed it ours.
    draws = iter([np.random.default_rng(seed).standard_normal((1, 4, 8, 8), dtype=np.float32), noise])

    def queued(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(next(draws))

    monkeypatch.setattr(vae_module, "randn_tensor", queued)
    monkeypatch.setattr(img2img_module, "randn_tensor", queued)
    class_name, overrides = SCHEDULER_CLASSES[scheduler]
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(
        tiny_sd1, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a blue square", image=init, strength=0.6, num_inference_steps=10, output_type="np").images
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m-karras"])  # Karras: fractional timesteps
@pytest.mark.parametrize("tool", ["optimum-intel", "optimum-onnx"])
def test_other_tools_exports_match_diffusers(tool, scheduler, tmp_path, monkeypatch):
    """sdcpu on optimum-intel's and optimum's exports (committed fixtures, no sdcpu.json) against diffusers
    on the pipeline they were exported from."""
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    options = LoadOptions(compute_precision="f32", cache_dir=str(tmp_path))
    with pytest.warns(SdcpuNotice, match="no sdcpu.json"):
        pipe = Pipeline.load(tiny.INTEROP / tool, options)
    ours = pipe(
        "a red circle on the left", negative_prompt="blurry", steps=6, seed=11, scheduler=scheduler, latents=latents
    ).array
    # diffusers with the scheduler config as the tool saved it (with every default written out, such
    # as timestep_spacing "leading", which the source's config leaves to each scheduler class).
    source = shutil.copytree(tiny.INTEROP / "source", tmp_path / "source")
    shutil.copyfile(
        tiny.INTEROP / tool / "scheduler" / "scheduler_config.json", source / "scheduler" / "scheduler_config.json"
    )
    theirs = _reference(source, scheduler, latents, 6, 7.5, monkeypatch, 11)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_turbo_schedule_matches_diffusers(steps, tiny_sd1, sd1_openvino, monkeypatch):
    """SD-Turbo's schedule: Euler ancestral over "trailing" timesteps (the model's scheduler config says
    so), 1 to 4 steps, guidance off."""
    import dataclasses

    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    pipe.scheduler_config = dataclasses.replace(pipe.scheduler_config, timestep_spacing="trailing")
    ours = pipe("a red circle", steps=steps, guidance=0.0, seed=9, scheduler="euler-a", latents=latents).array
    pipe_ref = tiny.diffusers_pipeline(tiny_sd1, "EulerAncestralDiscreteScheduler", timestep_spacing="trailing")
    tiny.numpy_scheduler_noise(monkeypatch, 9)
    theirs = pipe_ref(
        "a red circle",
        num_inference_steps=steps,
        guidance_scale=0.0,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
    ).images
    assert pipe_ref.scheduler.timesteps[0] == 999  # trailing: starts at the last training timestep
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
