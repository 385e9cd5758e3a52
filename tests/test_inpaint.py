"""Inpainting: 9-channel inpainting UNets and latent blending with ordinary ones, against diffusers'
StableDiffusionInpaintPipeline (<= 2/255 per pixel, f32 compute, both backends); the mask's effect;
the original's pixels kept; bad masks refused."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
from PIL import Image, ImageDraw

from sdcpu import Pipeline
from sdcpu.demo import world as world
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.settings import MaskSettings

PIXEL_TOLERANCE = 2 / 255
F32 = LoadOptions(compute_precision="f32")
AS_DIFFUSERS = MaskSettings(blur=0, keep_unmasked=False)  # diffusers neither blurs nor pastes back


def _image(seed: int = 5) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask(box: tuple[int, int, int, int] = (8, 8, 40, 48), size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


@pytest.mark.parity
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("scheduler", ["ddim", "euler-a", "dpm++2m"])
def test_inpainting_model_matches_diffusers(
    scheduler, backend, tiny_inpainting, inpainting_openvino, inpainting_onnx, monkeypatch
):
    folder = inpainting_openvino if backend == "openvino" else inpainting_onnx
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    ours = pipe.inpaint(
        "a blue square",
        _image(),
        _mask(),
        steps=8,
        seed=4,
        scheduler=scheduler,
        latents=noise,
        mask_settings=AS_DIFFUSERS,
    ).array
    # At full strength with given latents, diffusers draws the masked image's latent sample, then step noise.
    steps = dict(num_inference_steps=8, latents=torch_tensor(noise))
    theirs = tiny.diffusers_inpaint(
        tiny_inpainting, monkeypatch, 4, 0, scheduler, image=_image(), mask_image=_mask(), **steps
    )
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


@pytest.mark.parity
@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("scheduler, strength", [("ddim", 1.0), ("euler-a", 1.0)])
def test_latent_blending_matches_diffusers(scheduler, strength, backend, tiny_sd1, sd1_openvino, sd1_onnx, monkeypatch):
    """A 4-channel model inpaints by latent blending, as diffusers' inpainting pipeline does for it."""
    folder = sd1_openvino if backend == "openvino" else sd1_onnx
    noise = np.random.default_rng(9).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    ours = pipe.inpaint(
        "a blue square",
        _image(),
        _mask(),
        steps=8,
        seed=4,
        scheduler=scheduler,
        strength=strength,
        latents=noise,
        mask_settings=AS_DIFFUSERS,
    ).array
    # diffusers draws the image's latent sample, then (unused by a 4-channel UNet) the masked image's.
    call = dict(num_inference_steps=8, latents=torch_tensor(noise), strength=strength)
    theirs = tiny.diffusers_inpaint(tiny_sd1, monkeypatch, 4, 1, scheduler, image=_image(), mask_image=_mask(), **call)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"


def torch_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(array)


@pytest.mark.parity
def test_the_mask_channels_matter(inpainting_openvino):
    """Control: with nothing pasted back, only the UNet's mask channels carry the mask; another mask must
    give another image (an implementation that fed zeros there would not)."""
    pipe = Pipeline.load(inpainting_openvino, F32)
    first, second = (
        pipe.inpaint("a blue square", _image(), mask, steps=4, seed=1, mask_settings=AS_DIFFUSERS).array
        for mask in (_mask((8, 8, 40, 48)), _mask((30, 0, 63, 20)))
    )
    assert float(np.abs(first - second).max()) > 0.05


def test_unmasked_pixels_stay_and_the_masked_part_follows_the_prompt():
    """On the demo model (latent blending): outside the mask and its blurred edge every pixel is the
    original's; inside, the caption's shape is drawn where the old one was."""
    old = world.Scene("circle", "red", "small", "left", "blue")
    image = world.render(old)
    mask = _mask((2, 14, 34, 50))  # the left-hand region, where the old shape is
    pipe = Pipeline.load(None, F32)
    result = pipe.inpaint("a large yellow square on the left, blue background", image, mask, seed=3)
    out, original = np.asarray(result.images[0]), np.asarray(image)
    keep = np.asarray(_mask((2 - 12, 14 - 12, 34 + 12, 50 + 12))) == 0  # blur 4: 3 radii of edge
    assert np.array_equal(out[keep], original[keep])
    verdict = world.judge(result.images[0])
    assert (verdict["shape"], verdict["colour"], verdict["position"]) == ("square", "yellow", "left")


def test_the_mask_decides_what_changes():
    """Control for latent blending: two prompts end in latents that differ inside the mask and are equal
    (the image's own) outside it, which ignoring the mask would not give. Compared in latent space,
    because the demo VAE's decoder attends over the whole image."""
    image = world.render(world.Scene("triangle", "green", "large", "right", "purple"))
    pipe = Pipeline.load(None, F32)
    final = []
    for prompt in ("a small red circle on the left, purple background", "a large white square on the left"):
        keep = lambda done, total, latents: final.append(latents.copy()) if done == total else None  # noqa: E731
        pipe.inpaint(prompt, image, _mask((0, 0, 31, 63)), seed=2, callback=keep)
    first, second = final
    assert float(np.abs(first[..., :8] - second[..., :8]).mean()) > 0.1  # latent columns 0-7: the mask
    assert np.array_equal(first[..., 8:], second[..., 8:])


@pytest.mark.parametrize(
    "mask, settings, message",
    [
        (_mask(size=32), MaskSettings(), "the mask is 32x32 and the image 64x64"),
        (Image.new("L", (64, 64), 0), MaskSettings(), "the mask is empty"),
        (_mask(), MaskSettings(blur=-1), "mask blur must be from 0 to 256"),
        (_mask(), MaskSettings(padding=1000), "mask padding must be from 0 to 256"),
    ],
)
def test_bad_masks_are_refused(mask, settings, message):
    pipe = Pipeline.load(None, F32)
    with pytest.raises(SdcpuError, match=message):
        pipe.inpaint("a red circle", _image(), mask, mask_settings=settings)


@pytest.mark.parity
def test_an_inpainting_model_refuses_txt2img(inpainting_openvino):
    pipe = Pipeline.load(inpainting_openvino, F32)
    assert pipe.manifest.task == "inpainting"
    with pytest.raises(SdcpuError, match="holds a model for inpainting; run it with `sdcpu inpaint`"):
        pipe("a red circle")


@pytest.mark.parity
def test_a_safety_checker_image_processor_is_left_behind(tiny_inpainting, tmp_path):
    """SD 1.x folders (the SD inpainting model's too) hold the safety checker's CLIP image processor in
    feature_extractor/; it is not depth2img's and must neither be copied nor read as one."""
    import json
    import shutil

    from sdcpu.export.convert import convert

    source = shutil.copytree(tiny_inpainting, tmp_path / "source")
    (source / "feature_extractor").mkdir()
    clip = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}, "crop_size": 224}
    (source / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(clip))
    convert(str(source), tmp_path / "converted", "onnx", "fp32", progress=lambda _: None)  # any format will do
    assert not (tmp_path / "converted" / "feature_extractor").exists()
    shutil.copytree(source / "feature_extractor", tmp_path / "converted" / "feature_extractor")  # as others leave it
    pipe = Pipeline.load(tmp_path / "converted", F32)
    assert pipe.inpaint("a blue square", _image(), _mask(), steps=2, seed=1).images[0].size == (64, 64)
