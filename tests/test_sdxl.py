"""Stable Diffusion XL: a tiny random pipeline of SDXL's architecture, converted, against PyTorch (each
network, max abs diff <= 1e-4) and diffusers' StableDiffusionXLPipeline, Img2Img and Inpaint pipelines
(<= 2/255 per pixel), at f32 compute on both backends, guided and not, at 1 and at 20 steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

import tiny  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.export.convert import convert  # noqa: E402
from sdcpu.format.manifest import Manifest  # noqa: E402
from sdcpu.runtime.components.unet import unet_interfaces  # noqa: E402
from sdcpu.runtime.engines import load_model  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402
from sdcpu.runtime.pipelines import StableDiffusionXLPipeline  # noqa: E402
from sdcpu.runtime.settings import MaskSettings  # noqa: E402

COMPONENT_TOLERANCE = 1e-4
PIXEL_TOLERANCE = 2 / 255
BACKENDS = ["openvino", "onnxruntime"]


def _folder(backend, sdxl_openvino, sdxl_onnx):
    return sdxl_openvino if backend == "openvino" else sdxl_onnx


def _load(folder, backend="openvino") -> Pipeline:
    return Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32", cache=False))


def _runtime(folder, component):
    manifest = Manifest.load(folder)
    options = LoadOptions(compute_precision="f32", cache=False).resolve(manifest)
    interface = unet_interfaces(manifest).get(component)
    return load_model(manifest.graph_path(folder, component), options, interface=interface)


def _diffusers(folder, kind: str = "StableDiffusionXLPipeline", scheduler: str = "euler", **overrides):
    import diffusers

    pipe = getattr(diffusers, kind).from_pretrained(folder)
    class_name, defaults = tiny.DIFFUSERS_SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **defaults, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


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
    got_one = _runtime(folder, "text_encoder").outputs(input_ids=ids)
    got_two = _runtime(folder, "text_encoder_2").outputs(input_ids=ids)
    pairs = {
        "text_encoder penultimate": (got_one[tiny.TEXT["num_hidden_layers"] + 1], one.hidden_states[-2].numpy()),
        "text_encoder_2 penultimate": (got_two[tiny.TEXT["num_hidden_layers"] + 1], two.hidden_states[-2].numpy()),
        "text_encoder_2 text_embeds": (got_two[0], two.text_embeds.numpy()),
        "unet": (
            _runtime(folder, "unet")(sample=sample, timestep=timestep, encoder_hidden_states=hidden, **added_np(added)),
            out,
        ),
    }
    for name, (got, expected) in pairs.items():
        assert _max_diff(got, expected) <= COMPONENT_TOLERANCE, name


def added_np(added):
    return {name: value.numpy() for name, value in added.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "steps, guidance, negative",
    [(20, 5.0, None), (1, 5.0, "blurry"), (20, 5.0, "blurry"), (20, 1.0, None), (1, 0.0, None)],
)
def test_txt2img_matches_diffusers(steps, guidance, negative, backend, tiny_sdxl, sdxl_openvino, sdxl_onnx):
    """No negative prompt with guidance: zeros as its half (force_zeros_for_empty_prompt), as diffusers."""
    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = _load(_folder(backend, sdxl_openvino, sdxl_onnx), backend)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    ours = pipe("a red circle", negative_prompt=negative, steps=steps, guidance=guidance, seed=1, latents=latents)
    theirs = _diffusers(tiny_sdxl)(
        "a red circle",
        negative_prompt=negative,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=torch.from_numpy(latents),
        output_type="np",
        height=64,
        width=64,
    ).images
    assert _max_diff(ours.array, theirs) <= PIXEL_TOLERANCE


@pytest.mark.parametrize("scheduler", list(tiny.DIFFUSERS_SCHEDULERS))
def test_every_scheduler_matches_diffusers(scheduler, tiny_sdxl, sdxl_openvino, monkeypatch):
    latents = np.random.default_rng(3).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = _load(sdxl_openvino)("a red circle", steps=6, guidance=5.0, seed=2, scheduler=scheduler, latents=latents)
    pipe = _diffusers(tiny_sdxl, scheduler=scheduler)
    tiny.numpy_scheduler_noise(monkeypatch, 2)
    call = dict(num_inference_steps=6, guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = pipe("a red circle", height=64, width=64, **call).images
    assert _max_diff(ours.array, theirs) <= PIXEL_TOLERANCE


@pytest.mark.parametrize("steps", [1, 4])
def test_the_turbo_schedule_matches_diffusers(steps, tiny_sdxl, sdxl_openvino, monkeypatch):
    """SDXL-Turbo's: Euler ancestral over "trailing" timesteps, guidance off, 512 (here 64) pixels."""
    import dataclasses

    latents = np.random.default_rng(5).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = _load(sdxl_openvino)
    pipe.scheduler_config = dataclasses.replace(pipe.scheduler_config, timestep_spacing="trailing")
    ours = pipe("a red circle", steps=steps, guidance=0.0, seed=9, scheduler="euler-a", latents=latents).array
    reference = _diffusers(tiny_sdxl, scheduler="euler-a", timestep_spacing="trailing")
    tiny.numpy_scheduler_noise(monkeypatch, 9)
    call = dict(num_inference_steps=steps, guidance_scale=0.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = reference("a red circle", height=64, width=64, **call).images
    assert _max_diff(ours, theirs) <= PIXEL_TOLERANCE


def _image(seed: int = 5):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps, guidance", [(2, 5.0), (20, 5.0), (20, 1.0)])
def test_img2img_matches_diffusers(steps, guidance, backend, tiny_sdxl, sdxl_openvino, sdxl_onnx, monkeypatch):
    """Strength 0.5: 1 denoising step of 2, and 10 of 20."""
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as img2img_module

    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = _load(_folder(backend, sdxl_openvino, sdxl_onnx), backend)
    ours = pipe(
        "a blue square", steps=steps, guidance=guidance, seed=4, init_image=_image(), strength=0.5, latents=noise
    )
    # diffusers draws (1) the VAE posterior sample, (2) the noise added at the start: feed it ours.
    draws = iter([np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32), noise])
    queued = lambda *args, **kwargs: torch.from_numpy(next(draws))  # noqa: E731
    monkeypatch.setattr(vae_module, "randn_tensor", queued)
    monkeypatch.setattr(img2img_module, "randn_tensor", queued)
    reference = _diffusers(tiny_sdxl, "StableDiffusionXLImg2ImgPipeline")
    call = dict(image=_image(), strength=0.5, num_inference_steps=steps, guidance_scale=guidance, output_type="np")
    theirs = reference("a blue square", **call).images
    assert _max_diff(ours.array, theirs) <= PIXEL_TOLERANCE


def _mask():
    from PIL import Image, ImageDraw

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 48), fill=255)
    return mask


AS_DIFFUSERS = MaskSettings(blur=0, keep_unmasked=False)  # diffusers neither blurs nor pastes back


@pytest.fixture(scope="module")
def sdxl_inpainting(tiny_sdxl_inpainting, tmp_path_factory):
    folders = {}
    for fmt in ("openvino", "onnx"):
        folders[fmt] = tmp_path_factory.mktemp("converted") / f"sdxl-inpainting-{fmt}"
        convert(str(tiny_sdxl_inpainting), folders[fmt], fmt, progress=lambda _: None)
    return folders


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps, guidance", [(1, 5.0), (20, 5.0), (20, 1.0)])
def test_the_9_channel_inpainting_model_matches_diffusers(
    steps, guidance, backend, tiny_sdxl_inpainting, sdxl_inpainting, monkeypatch
):
    folder = sdxl_inpainting["openvino" if backend == "openvino" else "onnx"]
    assert Manifest.load(folder).task == "inpainting"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInpaintPipeline"
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = _load(folder, backend)
    ours = pipe.inpaint(
        "a blue square",
        _image(),
        _mask(),
        steps=steps,
        guidance=guidance,
        seed=4,
        latents=noise,
        mask_settings=AS_DIFFUSERS,
    ).array
    call = dict(num_inference_steps=steps, guidance_scale=guidance, latents=torch.from_numpy(noise), strength=1.0)
    theirs = tiny.diffusers_inpaint(
        tiny_sdxl_inpainting,
        monkeypatch,
        4,
        0,
        "euler",
        "StableDiffusionXLInpaintPipeline",
        image=_image(),
        mask_image=_mask(),
        **call,
    )
    assert _max_diff(ours, theirs) <= PIXEL_TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_latent_blending_matches_diffusers(backend, tiny_sdxl, sdxl_openvino, sdxl_onnx, monkeypatch):
    """SDXL base inpaints by latent blending, as diffusers' SDXL inpainting pipeline does for it."""
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = _load(_folder(backend, sdxl_openvino, sdxl_onnx), backend)
    ours = pipe.inpaint(
        "a blue square",
        _image(),
        _mask(),
        steps=8,
        guidance=5.0,
        seed=4,
        strength=1.0,
        latents=noise,
        mask_settings=AS_DIFFUSERS,
    ).array
    call = dict(num_inference_steps=8, guidance_scale=5.0, latents=torch.from_numpy(noise), strength=1.0)
    theirs = tiny.diffusers_inpaint(
        tiny_sdxl,
        monkeypatch,
        4,
        1,
        "euler",
        "StableDiffusionXLInpaintPipeline",
        image=_image(),
        mask_image=_mask(),
        **call,
    )
    assert _max_diff(ours, theirs) <= PIXEL_TOLERANCE


def _from_folder(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return (
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        UNet2DConditionModel.from_pretrained(folder / "unet"),
        AutoencoderKL.from_pretrained(folder / "vae"),
    )


def test_a_single_file_converts_to_the_same_networks_as_the_folder(tiny_sdxl, sdxl_onnx, tmp_path, monkeypatch):
    """A1111's SDXL layout, read with the folder's configs (as --config gives the real ones), offline."""
    import ldm_checkpoint
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_file(ldm_checkpoint.sdxl_checkpoint(*_from_folder(tiny_sdxl)), str(tmp_path / "xl.safetensors"))
    out = tmp_path / "single"
    convert(
        str(tmp_path / "xl.safetensors"),
        out,
        "onnx",
        config_dir=tiny_sdxl,
        tokenizer_dir=tiny_sdxl / "tokenizer",
        progress=lambda _: None,
    )
    manifest = Manifest.load(out)
    assert manifest.family == "sdxl" and "preset sdxl" in manifest.source
    assert json.loads((out / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tiny.TEXT["vocab_size"], size=(2, 77), dtype=np.int64)
    inputs = {
        "text_encoder": {"input_ids": ids},
        "text_encoder_2": {"input_ids": ids},
        "unet": {
            "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
            "timestep": np.array([500.0, 500.0], dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 64), dtype=np.float32),
            "text_embeds": rng.standard_normal((2, 32), dtype=np.float32),
            "time_ids": np.array([[64, 64, 0, 0, 64, 64]] * 2, dtype=np.float32),
        },
        "vae_decoder": {"latent_sample": rng.standard_normal((1, 4, 8, 8), dtype=np.float32)},
    }
    for component, feed in inputs.items():
        for single, folder in zip(
            _runtime(out, component).outputs(**feed), _runtime(sdxl_onnx, component).outputs(**feed), strict=True
        ):
            assert _max_diff(single, folder) <= COMPONENT_TOLERANCE, component


@pytest.fixture(scope="module")
def sdxl_quantized(tiny_sdxl, tmp_path_factory):
    from sdcpu.export.calibration import CalibrationSettings

    folders = {}
    for precision in ("int8-hybrid", "int4"):
        folders[precision] = tmp_path_factory.mktemp("quantized") / f"sdxl-{precision}"
        settings = CalibrationSettings(size=4)
        convert(
            str(tiny_sdxl), folders[precision], "openvino", precision, calibration=settings, progress=lambda _: None
        )
    return folders


@pytest.mark.parametrize("precision", ["int8-hybrid", "int4"])
def test_quantized_sdxl_is_structured_as_asked_and_near_fp32(precision, sdxl_quantized, sdxl_openvino):
    """int8-hybrid calibrates on SDXL's own inputs (pooled text and time ids); int4 reaches both text encoders."""
    from test_quantize import openvino_weight_types

    folder = sdxl_quantized[precision]
    unet = openvino_weight_types(folder / "unet" / "openvino_model.xml")
    second = openvino_weight_types(folder / "text_encoder_2" / "openvino_model.xml")
    if precision == "int8-hybrid":
        assert unet["fake_quantize"] >= 10 and second["fake_quantize"] == 0 and second["u8"] >= 4, (unet, second)
    else:
        assert second["i4"] >= 4 and unet["i4"] >= 4, (unet, second)
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = _load(folder)("a dog", steps=4, latents=latents, seed=1).array
    reference = _load(sdxl_openvino)("a dog", steps=4, latents=latents, seed=1).array
    # Loose: random tiny weights are a worst case for quantization; a demo model measures quality.
    assert 0 < float(np.abs(ours - reference).mean()) < (0.1 if precision == "int8-hybrid" else 0.02)


def test_a_size_that_does_not_fit_is_refused_naming_one_that_does(sdxl_openvino, monkeypatch):
    import sdcpu.runtime.memory_check as check
    from sdcpu.errors import SdcpuError

    pipe = _load(sdxl_openvino)
    weights = sum(info["bytes"] for info in pipe.manifest.files.values())
    fits = check.memory_need(pipe.settings("x", width=1024, height=1024), pipe.memory, weights, 8)
    monkeypatch.setattr(check, "machine_bytes", lambda: fits + 1)
    pipe.settings("x", width=1024, height=1024)
    with pytest.raises(SdcpuError, match=r"1 image\(s\) of 2048x2048 need about .* \(about 1024x1024 fits\)"):
        pipe.settings("x", width=2048, height=2048)


def test_the_a1111_api_serves_an_sdxl_model_at_its_native_size(sdxl_openvino):
    """No width or height: the model's own (SDXL's 1024; the tiny one's 64), as `sd-models` lists it."""
    import base64
    import io

    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient
    from PIL import Image

    from sdcpu.serve.app import create_app

    pipe = _load(sdxl_openvino)
    with TestClient(create_app(pipe), base_url="http://127.0.0.1:7860") as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "a red circle", "steps": 2})
        assert answer.status_code == 200, answer.text
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        assert image.size == (pipe.manifest.sample_size,) * 2 == (64, 64)
        assert "Size: 64x64" in image.info["parameters"]
        models = client.get("/sdapi/v1/sd-models").json()
        assert models[0]["hash"] == pipe.model_hash and client.get("/api/model").json()["size"] == 64
        client.app.state.server.queue.close()


def test_an_sdxl_folder_of_another_tool_is_read_from_its_files(sdxl_openvino, tmp_path):
    """Without sdcpu.json (optimum-intel's layout: two tokenizers and text encoders): the same image."""
    import shutil

    from sdcpu.errors import SdcpuNotice

    foreign = shutil.copytree(sdxl_openvino, tmp_path / "foreign")
    (foreign / "sdcpu.json").unlink()
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    with pytest.warns(SdcpuNotice, match="no sdcpu.json"):
        theirs = _load(foreign)
    manifest = theirs.manifest
    assert manifest.family == "sdxl" and {"text_encoder_2", "unet"} <= set(manifest.components)
    assert any(rel.startswith("tokenizer_2/") for rel in manifest.files)
    ours = _load(sdxl_openvino)("a red circle", steps=3, seed=1, latents=latents).array
    np.testing.assert_array_equal(theirs("a red circle", steps=3, seed=1, latents=latents).array, ours)


def test_the_tiny_decoder_matches_diffusers_with_autoencoder_tiny(tiny_sdxl, tiny_vae, sdxl_openvino):
    """TAESDXL's place (`convert --tiny-vae`): the UNet's latents decoded as they are."""
    from diffusers import AutoencoderTiny

    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    options = LoadOptions(compute_precision="f32", decoder="tiny", cache=False)
    ours = Pipeline.load(sdxl_openvino, options)("a red circle", steps=4, seed=2, latents=latents).array
    pipe = _diffusers(tiny_sdxl)
    pipe.vae = AutoencoderTiny.from_pretrained(tiny_vae).eval()
    call = dict(num_inference_steps=4, guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = pipe("a red circle", height=64, width=64, **call).images
    assert _max_diff(ours, theirs) <= PIXEL_TOLERANCE
    assert _max_diff(ours, _load(sdxl_openvino)("a red circle", steps=4, seed=2, latents=latents).array) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_shallow_pass_with_fresh_features_is_the_whole_unet(backend, sdxl_openvino, sdxl_onnx):
    """DeepCache's shallow pass adds SDXL's added embedding (pooled text, time ids) as the UNet does."""
    pipe = _load(_folder(backend, sdxl_openvino, sdxl_onnx), backend)
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 64), dtype=np.float32),
        "text_embeds": rng.standard_normal((2, 32), dtype=np.float32),
        "time_ids": np.array([[64, 64, 0, 0, 64, 64], [32, 48, 8, 0, 64, 64]], dtype=np.float32),
    }
    eps, deep = pipe.unet.outputs(**inputs)
    assert pipe.unet_shallow is not None
    np.testing.assert_allclose(pipe.unet_shallow(**inputs, deep_features=deep), eps, rtol=1e-4, atol=1e-4)


def test_deep_cache_low_memory_previews_and_watermark_run_on_sdxl(sdxl_openvino):
    pipe = _load(sdxl_openvino)
    exact = pipe("a cat", steps=6, seed=3).array
    seen = []
    cached = pipe("a cat", steps=6, seed=3, deep_cache=3, callback=lambda i, n, x: seen.append(pipe.preview(x).size))
    assert 0 < float(np.abs(cached.array - exact).mean()) < 0.1 and seen == [(64, 64)] * 6
    low = Pipeline.load(sdxl_openvino, LoadOptions(low_memory=True, compute_precision="f32", cache=False))
    np.testing.assert_allclose(low("a cat", steps=6, seed=3, deep_cache=3).array, cached.array, atol=2e-3)
    marked = pipe("a cat", steps=2, seed=3, watermark=True)
    assert "sdcpu" in marked.settings.png_metadata(0) and marked.settings.watermark
