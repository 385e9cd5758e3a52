"""Stable Diffusion XL beyond txt2img and img2img (test_sdxl.py): inpainting against diffusers'
StableDiffusionXLInpaintPipeline, single files, quantized folders, the memory check, the A1111 API,
other tools' folders, the tiny decoder, DeepCache, low memory, previews and the watermark."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

import tiny  # noqa: E402
import xl  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.export.convert import convert  # noqa: E402
from sdcpu.format.manifest import Manifest  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402
from sdcpu.runtime.settings import MaskSettings  # noqa: E402


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


@pytest.mark.parametrize("backend", xl.BACKENDS)
@pytest.mark.parametrize("steps, guidance", [(1, 5.0), (20, 5.0), (20, 1.0)])
def test_the_9_channel_inpainting_model_matches_diffusers(
    steps, guidance, backend, tiny_sdxl_inpainting, sdxl_inpainting, monkeypatch
):
    folder = sdxl_inpainting["openvino" if backend == "openvino" else "onnx"]
    assert Manifest.load(folder).task == "inpainting"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInpaintPipeline"
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = xl.load(folder, backend)
    ours = pipe.inpaint(
        "a blue square",
        xl.image(),
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
        image=xl.image(),
        mask_image=_mask(),
        **call,
    )
    assert xl.max_diff(ours, theirs) <= xl.PIXEL_TOLERANCE


def test_latent_blending_matches_diffusers(tiny_sdxl, sdxl_openvino, monkeypatch):
    """SDXL base inpaints by latent blending, as diffusers' SDXL inpainting pipeline does for it (OpenVINO;
    the 9-channel model above runs on both backends)."""
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = xl.load(sdxl_openvino)
    ours = pipe.inpaint(
        "a blue square",
        xl.image(),
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
        image=xl.image(),
        mask_image=_mask(),
        **call,
    )
    assert xl.max_diff(ours, theirs) <= xl.PIXEL_TOLERANCE


def _from_folder(folder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return (
        CLIPTextModel.from_pretrained(folder / "text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
        UNet2DConditionModel.from_pretrained(folder / "unet"),
        AutoencoderKL.from_pretrained(folder / "vae"),
    )


def test_a_single_file_converts_to_the_same_networks_as_the_folder(tiny_sdxl, sdxl_openvino, tmp_path, monkeypatch):
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
            xl.runtime(out, component).outputs(**feed),
            xl.runtime(sdxl_openvino, component).outputs(**feed),
            strict=True,
        ):
            assert xl.max_diff(single, folder) <= xl.COMPONENT_TOLERANCE, component


@pytest.fixture(scope="module")
def sdxl_quantized(tiny_sdxl, tmp_path_factory):
    from sdcpu.export.calibration import CalibrationSettings

    folders = {}
    for precision in ("int8-hybrid",):  # int4's text encoders: test_int4_reaches_both_text_encoders
        folders[precision] = tmp_path_factory.mktemp("quantized") / f"sdxl-{precision}"
        settings = CalibrationSettings(size=2, resolution=32)  # half the tiny model's native size
        convert(
            str(tiny_sdxl), folders[precision], "openvino", precision, calibration=settings, progress=lambda _: None
        )
    return folders


def test_int4_reaches_both_text_encoders():
    from sdcpu.export.quantize import component_precision

    assert [component_precision("int4", c) for c in ("text_encoder", "text_encoder_2", "unet", "vae_decoder")] == [
        "int4",
        "int4",
        "int4",
        "int8",
    ]


@pytest.mark.parametrize("precision", ["int8-hybrid"])
def test_quantized_sdxl_is_structured_as_asked_and_near_fp32(precision, sdxl_quantized, sdxl_openvino):
    """int8-hybrid calibrates on SDXL's own inputs (pooled text and time ids)."""
    from test_quantize import openvino_weight_types

    folder = sdxl_quantized[precision]
    unet = openvino_weight_types(folder / "unet" / "openvino_model.xml")
    second = openvino_weight_types(folder / "text_encoder_2" / "openvino_model.xml")
    if precision == "int8-hybrid":
        assert Manifest.load(folder).extra["calibration"]["resolution"] == 32
        assert unet["fake_quantize"] >= 10 and second["fake_quantize"] == 0 and second["u8"] >= 4, (unet, second)
    else:
        assert second["i4"] >= 4 and unet["i4"] >= 4, (unet, second)
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = xl.load(folder)("a dog", steps=4, latents=latents, seed=1).array
    reference = xl.load(sdxl_openvino)("a dog", steps=4, latents=latents, seed=1).array
    # Loose: random tiny weights are a worst case for quantization; a demo model measures quality.
    assert 0 < float(np.abs(ours - reference).mean()) < (0.1 if precision == "int8-hybrid" else 0.02)


def test_a_size_that_does_not_fit_is_refused_naming_one_that_does(sdxl_openvino, monkeypatch):
    import sdcpu.runtime.memory_check as check
    from sdcpu.errors import SdcpuError

    pipe = xl.load(sdxl_openvino)
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

    pipe = xl.load(sdxl_openvino)
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
        theirs = xl.load(foreign)
    manifest = theirs.manifest
    assert manifest.family == "sdxl" and {"text_encoder_2", "unet"} <= set(manifest.components)
    assert any(rel.startswith("tokenizer_2/") for rel in manifest.files)
    ours = xl.load(sdxl_openvino)("a red circle", steps=3, seed=1, latents=latents).array
    np.testing.assert_array_equal(theirs("a red circle", steps=3, seed=1, latents=latents).array, ours)


def test_the_tiny_decoder_matches_diffusers_with_autoencoder_tiny(tiny_sdxl, tiny_vae, sdxl_openvino):
    """TAESDXL's place (`convert --tiny-vae`): the UNet's latents decoded as they are."""
    from diffusers import AutoencoderTiny

    latents = np.random.default_rng(7).standard_normal((1, 4, 8, 8), dtype=np.float32)
    options = LoadOptions(compute_precision="f32", decoder="tiny", cache=False)
    ours = Pipeline.load(sdxl_openvino, options)("a red circle", steps=4, seed=2, latents=latents).array
    pipe = xl.diffusers_pipeline(tiny_sdxl)
    pipe.vae = AutoencoderTiny.from_pretrained(tiny_vae).eval()
    call = dict(num_inference_steps=4, guidance_scale=5.0, latents=torch.from_numpy(latents), output_type="np")
    theirs = pipe("a red circle", height=64, width=64, **call).images
    assert xl.max_diff(ours, theirs) <= xl.PIXEL_TOLERANCE
    assert xl.max_diff(ours, xl.load(sdxl_openvino)("a red circle", steps=4, seed=2, latents=latents).array) > 0.1


def test_the_shallow_pass_with_fresh_features_is_the_whole_unet(sdxl_openvino):
    """DeepCache's shallow pass adds SDXL's added embedding (pooled text, time ids) as the UNet does."""
    pipe = xl.load(sdxl_openvino)
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
    pipe = xl.load(sdxl_openvino)
    exact = pipe("a cat", steps=6, seed=3).array
    seen = []
    cached = pipe("a cat", steps=6, seed=3, deep_cache=3, callback=lambda i, n, x: seen.append(pipe.preview(x).size))
    assert 0 < float(np.abs(cached.array - exact).mean()) < 0.1 and seen == [(64, 64)] * 6
    low = Pipeline.load(sdxl_openvino, LoadOptions(low_memory=True, compute_precision="f32", cache=False))
    np.testing.assert_allclose(low("a cat", steps=6, seed=3, deep_cache=3).array, cached.array, atol=2e-3)
    marked = pipe("a cat", steps=2, seed=3, width=256, height=256, watermark=True)  # the mark needs 256x256
    assert "sdcpu" in marked.settings.png_metadata(0) and marked.settings.watermark
