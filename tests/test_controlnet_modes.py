"""ControlNet with img2img and inpainting, against diffusers' StableDiffusionControlNetImg2ImgPipeline and
StableDiffusionControlNetInpaintPipeline (latent blending with an ordinary UNet), on both backends.

Tolerance: max abs pixel difference <= 2/255 on float images in [0, 1], at f32 (as tests/test_parity.py).
diffusers draws its random numbers from torch; they are replaced by the ones sdcpu draws from numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sdcpu.runtime.controlnet.setting import ControlSetting

pytestmark = pytest.mark.parity
PIXEL_TOLERANCE = 2 / 255
PROMPT = "a blue square"
LATENTS = (1, 4, 8, 8)
MODULES = {
    "StableDiffusionControlNetImg2ImgPipeline": "pipeline_controlnet_img2img",
    "StableDiffusionControlNetInpaintPipeline": "pipeline_controlnet_inpaint",
}


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 48), fill=255)
    return mask


def _pipeline(name: str, folder, controlnet, monkeypatch, draws: list[np.ndarray]):
    """diffusers' `name` pipeline whose VAE samples and added noise are `draws`, in order."""
    import diffusers
    import diffusers.models.autoencoders.vae as vae_module
    import torch

    queue = iter(draws)

    def queued(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(next(queue))

    monkeypatch.setattr(vae_module, "randn_tensor", queued)
    monkeypatch.setattr(getattr(diffusers.pipelines.controlnet, MODULES[name]), "randn_tensor", queued)
    net = diffusers.ControlNetModel.from_pretrained(controlnet)
    checker = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = getattr(diffusers, name).from_pretrained(folder, controlnet=net, **checker)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_controlnet_img2img_matches_diffusers(backend, tiny_sd1, tiny_controlnets, request, monkeypatch):
    pytest.importorskip("torch")
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    onnx = backend == "onnxruntime"
    folder = request.getfixturevalue("sd1_onnx" if onnx else "sd1_openvino")
    controlnet = request.getfixturevalue("controlnets_onnx" if onnx else "controlnets_openvino")[0]
    init, control = _image(5), _image(6)
    noise = np.random.default_rng(9).standard_normal(LATENTS, dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    settings = dict(steps=6, seed=4, scheduler="ddim", init_image=init, strength=0.6, latents=noise)
    ours = pipe(PROMPT, controls=[ControlSetting.of(controlnet, control, 0.9)], **settings).array
    # diffusers draws (1) the VAE posterior sample, (2) the noise added at the start.
    posterior = np.random.default_rng(4).standard_normal(LATENTS, dtype=np.float32)
    theirs = _pipeline(
        "StableDiffusionControlNetImg2ImgPipeline", tiny_sd1, tiny_controlnets[0], monkeypatch, [posterior, noise]
    )(
        PROMPT,
        image=init,
        control_image=control,
        strength=0.6,
        num_inference_steps=6,
        controlnet_conditioning_scale=0.9,
        output_type="np",
    ).images
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
    plain = pipe(PROMPT, **settings).array
    assert float(np.abs(ours - plain).max()) > 0.05  # the ControlNet did change the image


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_controlnet_inpainting_matches_diffusers(backend, tiny_sd1, tiny_controlnets, request, monkeypatch):
    torch = pytest.importorskip("torch")
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.settings import MaskSettings

    onnx = backend == "onnxruntime"
    folder = request.getfixturevalue("sd1_onnx" if onnx else "sd1_openvino")
    controlnet = request.getfixturevalue("controlnets_onnx" if onnx else "controlnets_openvino")[0]
    control = _image(6)
    noise = np.random.default_rng(9).standard_normal(LATENTS, dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))
    as_diffusers = MaskSettings(blur=0, keep_unmasked=False)  # diffusers neither blurs nor pastes back
    settings = dict(steps=5, seed=4, scheduler="ddim", latents=noise, mask_settings=as_diffusers)
    unit = ControlSetting.of(controlnet, control, 1.2, 0.0, 0.8)
    ours = pipe.inpaint(PROMPT, _image(5), _mask(), controls=[unit], **settings).array
    # diffusers draws the image's latent sample, then the masked image's (which a 4-channel UNet leaves unused).
    draws = [np.random.default_rng(4).standard_normal(LATENTS, dtype=np.float32), np.zeros(LATENTS, np.float32)]
    theirs = _pipeline("StableDiffusionControlNetInpaintPipeline", tiny_sd1, tiny_controlnets[0], monkeypatch, draws)(
        PROMPT,
        image=_image(5),
        mask_image=_mask(),
        control_image=control,
        num_inference_steps=5,
        latents=torch.from_numpy(noise),
        controlnet_conditioning_scale=1.2,
        control_guidance_end=0.8,
        height=64,
        width=64,
        output_type="np",
    ).images
    diff = float(np.abs(ours - theirs).max())
    assert diff <= PIXEL_TOLERANCE, f"max abs pixel diff {diff:.4f}"
    plain = pipe.inpaint(PROMPT, _image(5), _mask(), **settings).array
    assert float(np.abs(ours - plain).max()) > 0.05
