"""LoRA fused at convert (export/lora.py) on the tiny pipeline with random LoRAs, at f32 compute:

- a UNet LoRA against diffusers' own `load_lora_weights` + `fuse_lora`, in diffusers' layout (alpha in
  the file's metadata) on both backends, and in kohya's (the same weights renamed);
- a text-encoder LoRA against the same sum written out in torch: diffusers loads text-encoder LoRAs
  through transformers, whose 5.x asks for a PEFT release newer than the package registry has.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' own LoRA loading, the reference

import loras  # noqa: E402
import tiny  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.export.convert import convert  # noqa: E402
from sdcpu.export.lora import Lora  # noqa: E402
from sdcpu.format.manifest import sha256_file  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

SCALE = 0.7
PROMPT = "a red circle on the left"


UNET_TARGETS, TEXT_TARGETS = loras.UNET_TARGETS, loras.TEXT_TARGETS


@pytest.fixture(scope="module")
def unet_lora(tiny_sd1, tmp_path_factory):
    """A random LoRA (rank 4, alpha 8) on the UNet's attention projections and convolutions."""
    torch.manual_seed(3)
    unet = tiny.diffusers_pipeline(tiny_sd1).unet
    weights = loras.random_lora(unet, "unet", UNET_TARGETS)
    return loras.save_peft(weights, tmp_path_factory.mktemp("lora") / "unet.safetensors", ("unet",))


def _reference(tiny_sd1, lora, latents):
    pipe = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    pipe.load_lora_weights(lora)
    pipe.fuse_lora(lora_scale=SCALE)
    out = pipe(PROMPT, num_inference_steps=6, latents=torch.from_numpy(latents), output_type="np")
    return out.images


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_fused_lora_matches_diffusers(fmt, tiny_sd1, unet_lora, tmp_path):
    out = convert(str(tiny_sd1), tmp_path / "out", fmt, loras=[Lora(unet_lora, SCALE)], progress=lambda _: None)
    assert out.extra["loras"] == [{"file": unet_lora.name, "sha256": sha256_file(unet_lora), "scale": SCALE}]
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(tmp_path / "out", LoadOptions(compute_precision="f32"))
    ours = ours(PROMPT, steps=6, seed=1, scheduler="ddim", latents=latents).array
    theirs = _reference(tiny_sd1, unet_lora, latents)
    plain = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    plain = plain(PROMPT, num_inference_steps=6, latents=torch.from_numpy(latents), output_type="np").images
    assert float(np.abs(ours - theirs).max()) <= 2 / 255
    assert float(np.abs(theirs - plain).max()) > 0.05  # the LoRA changes the image


# LoRAs are fused in torch, before export: the tests below convert to ONNX, which exports several times
# faster than OpenVINO IR (both formats are checked above).
def test_a_kohya_lora_fuses_the_same(tiny_sd1, unet_lora, tmp_path):
    kohya = loras.kohya(unet_lora, tmp_path / "kohya.safetensors")
    convert(str(tiny_sd1), tmp_path / "out", "onnx", loras=[Lora(kohya, SCALE)], progress=lambda _: None)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(tmp_path / "out", LoadOptions(compute_precision="f32"))
    ours = ours(PROMPT, steps=6, seed=1, scheduler="ddim", latents=latents).array
    assert float(np.abs(ours - _reference(tiny_sd1, unet_lora, latents)).max()) <= 2 / 255


def test_a_text_encoder_lora_fuses_as_its_sum(tiny_sd1, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(5)
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    weights = loras.random_lora(reference.text_encoder, "text_encoder", TEXT_TARGETS)
    lora = loras.save_peft(weights, tmp_path / "te.safetensors", ("text_encoder",))
    convert(str(tiny_sd1), tmp_path / "out", "onnx", loras=[Lora(lora, SCALE)], progress=lambda _: None)
    with torch.no_grad():  # W + scale * alpha / rank * B A, by hand
        for name, module in reference.text_encoder.named_modules():
            if f"text_encoder.{name}.lora_A.weight" in weights:
                down, up = weights[f"text_encoder.{name}.lora_A.weight"], weights[f"text_encoder.{name}.lora_B.weight"]
                module.weight += SCALE * 8 / 4 * up @ down
    assert isinstance(reference, StableDiffusionPipeline) and isinstance(reference.scheduler, DDIMScheduler)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    theirs = reference(PROMPT, num_inference_steps=6, latents=torch.from_numpy(latents), output_type="np").images
    ours = Pipeline.load(tmp_path / "out", LoadOptions(compute_precision="f32"))
    ours = ours(PROMPT, steps=6, seed=1, scheduler="ddim", latents=latents).array
    assert float(np.abs(ours - theirs).max()) <= 2 / 255


def test_lora_layers_that_are_not_found_are_named(tiny_sd1, unet_lora, tmp_path):
    weights = load_file(unet_lora)
    weights["unet.mid_block.no_such_layer.lora_A.weight"] = torch.zeros(4, 8)
    weights["unet.mid_block.no_such_layer.lora_B.weight"] = torch.zeros(8, 4)
    save_file(weights, tmp_path / "partial.safetensors")
    lines: list[str] = []
    partial = [Lora(tmp_path / "partial.safetensors")]
    convert(str(tiny_sd1), tmp_path / "out", "onnx", loras=partial, progress=lines.append)
    assert any("warning:" in line and "mid_block.no_such_layer" in line for line in lines)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"unet.nowhere.lora_A.weight": (4, 8), "unet.nowhere.lora_B.weight": (8, 4)},
            "adapts no layer of this model's unet",
        ),
        ({"lora_te2_text_model_x.lora_down.weight": (4, 8)}, "keys sdcpu does not read: lora_te2_text_model_x"),
        (
            {"lora_te2_text_model_x.lora_down.weight": (4, 8), "lora_te2_text_model_x.lora_up.weight": (8, 4)},
            "is a LoRA for Stable Diffusion XL \\(it adapts text_encoder_2\\); this model is Stable Diffusion",
        ),
        ({"lora_unet_x.hada_w1_a": (4, 8)}, "keys sdcpu does not read"),
    ],
)
def test_a_lora_for_something_else_is_refused(tiny_sd1, tmp_path, keys, message):
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, tmp_path / "other.safetensors")
    with pytest.raises(SdcpuError, match=message):
        convert(str(tiny_sd1), tmp_path / "out", loras=[Lora(tmp_path / "other.safetensors")], progress=lambda _: None)
    assert not (tmp_path / "out").exists()


# SDXL: LoRAs for its UNet and both text encoders, in diffusers' layout and in kohya's (whose SDXL files
# name the UNet's layers as the original SGM code does: lora_unet_input_blocks_4_1_...).


@pytest.fixture(scope="module")
def sdxl_unet_lora(tiny_sdxl, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(6)
    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl / "unet")
    weights = loras.random_lora(unet, "unet", UNET_TARGETS)
    return loras.save_peft(weights, tmp_path_factory.mktemp("lora") / "sdxl-unet.safetensors", ("unet",))


def _sdxl_images(folder_or_pipe, latents, lora=None):
    import diffusers

    pipe = folder_or_pipe
    if not isinstance(pipe, diffusers.StableDiffusionXLPipeline):
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder_or_pipe)
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora(lora_scale=SCALE)
    call = dict(num_inference_steps=6, latents=torch.from_numpy(latents), output_type="np", height=64, width=64)
    return pipe(PROMPT, **call).images


def _ours(folder, latents):
    pipe = Pipeline.load(folder, LoadOptions(compute_precision="f32", cache=False))
    return pipe(PROMPT, steps=6, seed=1, scheduler="ddim", latents=latents).array


@pytest.mark.parametrize("layout", ["kohya-sgm"])  # diffusers' layout: the SD 1.x tests above
def test_a_fused_sdxl_lora_matches_diffusers_fuse_lora(layout, tiny_sdxl, sdxl_unet_lora, tmp_path):
    """diffusers reads both files itself (its own SGM renaming for kohya's): our fusion against its."""
    import diffusers

    config = diffusers.UNet2DConditionModel.load_config(tiny_sdxl / "unet")
    lora = sdxl_unet_lora if layout == "diffusers" else loras.sgm(sdxl_unet_lora, config, tmp_path / "sgm.safetensors")
    convert(str(tiny_sdxl), tmp_path / "out", "onnx", loras=[Lora(lora, SCALE)], progress=lambda _: None)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    theirs = _sdxl_images(tiny_sdxl, latents, lora)
    assert float(np.abs(_ours(tmp_path / "out", latents) - theirs).max()) <= 2 / 255
    assert float(np.abs(theirs - _sdxl_images(tiny_sdxl, latents)).max()) > 0.05  # the LoRA changes the image


def test_kohya_lora_for_both_sdxl_text_encoders_fuses_as_its_sum(tiny_sdxl, tmp_path):
    import diffusers

    torch.manual_seed(7)
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    reference.scheduler = diffusers.DDIMScheduler.from_config(reference.scheduler.config)
    kohya = {}
    with torch.no_grad():  # W + scale * alpha / rank * B A, by hand, and the same in kohya's layout
        for network, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
            weights = loras.random_lora(getattr(reference, network), network, TEXT_TARGETS)
            for name, module in getattr(reference, network).named_modules():
                if f"{network}.{name}.lora_A.weight" in weights:
                    down, up = weights[f"{network}.{name}.lora_A.weight"], weights[f"{network}.{name}.lora_B.weight"]
                    module.weight += SCALE * 8 / 4 * up @ down
                    stem = prefix + name.replace(".", "_")
                    kohya |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
                    kohya[f"{stem}.alpha"] = torch.tensor(8.0)
    save_file(kohya, tmp_path / "te.safetensors")
    lines: list[str] = []
    convert(
        str(tiny_sdxl),
        tmp_path / "out",
        "onnx",
        loras=[Lora(tmp_path / "te.safetensors", SCALE)],
        progress=lines.append,
    )
    assert any(line.startswith("text_encoder_2: ") and "layers adapted" in line for line in lines)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    assert float(np.abs(_ours(tmp_path / "out", latents) - _sdxl_images(reference, latents)).max()) <= 2 / 255


def test_an_sd1_lora_is_refused_by_an_sdxl_model(tiny_sdxl, unet_lora, tmp_path):
    """Layers of the same name and another width (SD 1's cross-attention reads other text): named."""
    with pytest.raises(SdcpuError, match="does not fit this model's unet: its layer .* is .* in the LoRA and .* here"):
        convert(str(tiny_sdxl), tmp_path / "out", "onnx", loras=[Lora(unet_lora)], progress=lambda _: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"down": torch.full((4, 8), 100.0), "up": torch.full((8, 4), 100.0), "alpha": torch.tensor(1e38)}, "overflow"),
        ({"down": torch.zeros(0, 8), "up": torch.zeros(8, 0)}, "which are not a low-rank pair"),
        ({"down": torch.zeros(4, 8), "up": torch.zeros(8, 4), "alpha": torch.ones(3)}, "an alpha is not one finite"),
        ({"down": torch.zeros(4, 8), "up": torch.zeros(8, 4, 2)}, "which are not a low-rank pair"),
    ],
)
def test_a_lora_of_the_right_names_and_wrong_values_is_refused_before_it_is_fused(tmp_path, tensors, message):
    from sdcpu.export.lora import fuse_loras

    model = torch.nn.Module()
    model.x = torch.nn.Linear(8, 8)
    parts = {"down": "lora_down.weight", "up": "lora_up.weight", "alpha": "alpha"}
    save_file({f"lora_unet_x.{parts[role]}": tensor for role, tensor in tensors.items()}, tmp_path / "l.safetensors")
    with pytest.raises(SdcpuError, match=message):
        fuse_loras(model, "unet", [Lora(tmp_path / "l.safetensors")], print)
