"""Stable Diffusion XL: a tiny random pipeline of SDXL's architecture, converted, against PyTorch (each
network, max abs diff <= 1e-4) and diffusers' StableDiffusionXLPipeline, Img2Img and Inpaint pipelines
(<= 2/255 per pixel), at f32 compute on both backends, guided and not, at 1 and at 20 steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

import tiny  # noqa: E402
import xl  # noqa: E402

from sdcpu.runtime.pipelines import StableDiffusionXLPipeline  # noqa: E402


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_networks_match_pytorch(fmt, tiny_sdxl, sdxl_openvino, sdxl_onnx):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = sdxl_openvino if fmt == "openvino" else sdxl_onnx
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tiny.TEXT["vocab_size"], size=(2, 77), dtype=np.int64)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    timestep = np.array([801.5, 801.5], dtype=np.float32)
    hidden = rng.standard_normal((2, 77, 64), dtype=np.float32)
    pooled = rng.standard_normal((2, 32), dtype=np.float32)
    time_ids = np.array([[64, 64, 0, 0, 64, 64], [96, 32, 8, 0, 64, 64]], dtype=np.float32)
    first = CLIPTextModel.from_pretrained(tiny_sdxl / "text_encoder").eval()
    second = CLIPTextModelWithProjection.from_pretrained(tiny_sdxl / "text_encoder_2").eval()
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet").eval()
    t = torch.from_numpy
    with torch.no_grad():
        one = first(t(ids), output_hidden_states=True)
        two = second(t(ids), output_hidden_states=True)
        added = {"text_embeds": t(pooled), "time_ids": t(time_ids)}
        out = unet(t(sample), t(timestep), t(hidden), added_cond_kwargs=added).sample.numpy()
    got_one = xl.runtime(folder, "text_encoder").outputs(input_ids=ids)
    got_two = xl.runtime(folder, "text_encoder_2").outputs(input_ids=ids)
    pairs = {
        "text_encoder penultimate": (got_one[tiny.TEXT["num_hidden_layers"] + 1], one.hidden_states[-2].numpy()),
        "text_encoder_2 penultimate": (got_two[tiny.TEXT["num_hidden_layers"] + 1], two.hidden_states[-2].numpy()),
        "text_encoder_2 text_embeds": (got_two[0], two.text_embeds.numpy()),
        "unet": (
            xl.runtime(folder, "unet")(
                sample=sample, timestep=timestep, encoder_hidden_states=hidden, **added_np(added)
            ),
            out,
        ),
    }
    for name, (got, expected) in pairs.items():
        assert xl.max_diff(got, expected) <= xl.COMPONENT_TOLERANCE, name


def added_np(added):
    return {name: value.numpy() for name, value in added.items()}


@pytest.mark.parametrize("backend", xl.BACKENDS)
@pytest.mark.parametrize(
    "steps, guidance, negative",
    [(20, 5.0, None), (1, 5.0, "blurry"), (20, 5.0, "blurry"), (20, 1.0, None), (1, 0.0, None)],
)
def test_txt2img_matches_diffusers(steps, guidance, negative, backend, tiny_sdxl, sdxl_openvino, sdxl_onnx):
    """No negative prompt with guidance: zeros as its half (force_zeros_for_empty_prompt), as diffusers."""
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = xl.load(xl.folder(backend, sdxl_openvino, sdxl_onnx), backend)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    ours = pipe("a red circle", negative_prompt=negative, steps=steps, guidance=guidance, seed=1, latents=latents)
    theirs = xl.diffusers_pipeline(tiny_sdxl)(
        "a red circle",
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
    ).images
    assert xl.max_diff(ours.array, theirs) <= xl.PIXEL_TOLERANCE


@pytest.mark.parametrize("scheduler", list(tiny.DIFFUSERS_SCHEDULERS))
def test_every_scheduler_matches_diffusers(scheduler, tiny_sdxl, sdxl_openvino, monkeypatch):
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = xl.load(sdxl_openvino)("a red circle", steps=6, guidance=5.0, seed=2, scheduler=scheduler, latents=latents)
    pipe = xl.diffusers_pipeline(tiny_sdxl, scheduler=scheduler)
    tiny.numpy_scheduler_noise(monkeypatch, 2)
    call = dict(num_inference_steps=6, guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = pipe("a red circle", height=64, width=64, **call).images
    assert xl.max_diff(ours.array, theirs) <= xl.PIXEL_TOLERANCE


@pytest.mark.parametrize("steps", [1, 4])
def test_the_turbo_schedule_matches_diffusers(steps, tiny_sdxl, sdxl_openvino, monkeypatch):
    """SDXL-Turbo's: Euler ancestral over "trailing" timesteps, guidance off, 512 (here 64) pixels."""
    import dataclasses

    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = xl.load(sdxl_openvino)
    pipe.scheduler_config = dataclasses.replace(pipe.scheduler_config, timestep_spacing="trailing")
    ours = pipe("a red circle", steps=steps, guidance=0.0, seed=9, scheduler="euler-a", latents=latents).array
    reference = xl.diffusers_pipeline(tiny_sdxl, scheduler="euler-a", timestep_spacing="trailing")
    tiny.numpy_scheduler_noise(monkeypatch, 9)
    call = dict(num_inference_steps=steps, guidance_scale=0.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = reference("a red circle", height=64, width=64, **call).images
    assert xl.max_diff(ours, theirs) <= xl.PIXEL_TOLERANCE


@pytest.mark.parametrize("backend", xl.BACKENDS)
@pytest.mark.parametrize("steps, guidance", [(2, 5.0), (20, 5.0), (20, 1.0)])
def test_img2img_matches_diffusers(steps, guidance, backend, tiny_sdxl, sdxl_openvino, sdxl_onnx, monkeypatch):
    """Strength 0.5: 1 denoising step of 2, and 10 of 20."""
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as img2img_module

    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = xl.load(xl.folder(backend, sdxl_openvino, sdxl_onnx), backend)
    ours = pipe(
        "a blue square", steps=steps, guidance=guidance, seed=4, init_image=xl.image(), strength=0.5, latents=noise
    )
    # diffusers draws (1) the VAE posterior sample, (2) the noise added at the start: feed it ours.
    draws = iter([np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32), noise])
    queued = lambda *args, **kwargs: torch.from_numpy(next(draws))  # noqa: E731
    monkeypatch.setattr(vae_module, "randn_tensor", queued)
    monkeypatch.setattr(img2img_module, "randn_tensor", queued)
    reference = xl.diffusers_pipeline(tiny_sdxl, "StableDiffusionXLImg2ImgPipeline")
    call = dict(image=xl.image(), strength=0.5, num_inference_steps=steps, guidance_scale=guidance, output_type="np")
    theirs = reference("a blue square", **call).images
    assert xl.max_diff(ours.array, theirs) <= xl.PIXEL_TOLERANCE


def test_text_encoders_are_exported_in_float32_whatever_their_config_says(tiny_sdxl, tmp_path):
    """SDXL's published text encoder configs say float16, and transformers 5 loads in a config's dtype:
    the second encoder would be traced as a float16 graph."""
    import json
    import shutil

    from sdcpu.export.families.sdxl import STABLE_DIFFUSION_XL

    shutil.copytree(tiny_sdxl / "text_encoder_2", tmp_path / "text_encoder_2")
    config = tmp_path / "text_encoder_2" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"dtype": "float16", "torch_dtype": "float16"}))
    model = STABLE_DIFFUSION_XL.loaders["text_encoder_2"].from_pretrained(tmp_path, "text_encoder_2")
    assert {str(p.dtype) for p in model.parameters()} == {"torch.float32"}
