"""LoRA fused at convert (export/lora.py) on the tiny pipeline with random LoRAs, at f32 compute:

- a UNet LoRA against diffusers' own `load_lora_weights` + `fuse_lora`, in diffusers' layout (alpha in
  the file's metadata) on both backends, and in kohya's (the same weights renamed);
- a text-encoder LoRA against the same sum written out in torch: diffusers loads text-encoder LoRAs
  through transformers, whose 5.x asks for a PEFT release newer than the package registry has.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' own LoRA loading, the reference

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


UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")  # Linear, 1x1 and 3x3 Conv2d
TEXT_TARGETS = ("q_proj", "v_proj")


def _random_lora(model, network: str, targets: tuple[str, ...], rank: int = 4) -> dict:
    # diffusers' (PEFT's) layout: lora_A is the down projection (a Conv2d with the layer's kernel for
    # convolutions), lora_B the up projection.
    weights = {}
    for name, module in model.named_modules():
        if not name.endswith(targets) or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        out, inp, *kernel = module.weight.shape
        weights[f"{network}.{name}.lora_A.weight"] = torch.randn(rank, inp, *kernel) * 0.2
        weights[f"{network}.{name}.lora_B.weight"] = torch.randn(out, rank, *([1, 1] if kernel else [])) * 0.2
    return weights


def _save(weights: dict, path, networks: tuple[str, ...]):
    # PEFT's adapter config as diffusers writes it into the file's metadata, flattened with a prefix.
    config = {}
    for n in networks:
        modules = sorted({k.split(".", 1)[1].rsplit(".lora_", 1)[0] for k in weights if k.startswith(n + ".")})
        config |= {f"{n}.r": 4, f"{n}.lora_alpha": 8, f"{n}.target_modules": modules}
    save_file(weights, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return path


@pytest.fixture(scope="module")
def unet_lora(tiny_sd1, tmp_path_factory):
    """A random LoRA (rank 4, alpha 8) on the UNet's attention projections and convolutions."""
    torch.manual_seed(3)
    unet = tiny.diffusers_pipeline(tiny_sd1).unet
    weights = _random_lora(unet, "unet", UNET_TARGETS)
    return _save(weights, tmp_path_factory.mktemp("lora") / "unet.safetensors", ("unet",))


def _kohya(diffusers_file, target):
    # The same weights in kohya's layout: underscored module names, lora_down/lora_up, and each alpha.
    renamed = {}
    for key, tensor in load_file(diffusers_file).items():
        network, rest = key.split(".", 1)
        module, part = rest.rsplit(".lora_", 1)
        stem = ("lora_unet_" if network == "unet" else "lora_te_") + module.replace(".", "_")
        renamed[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        renamed[f"{stem}.alpha"] = torch.tensor(8.0)  # the metadata's alpha, per layer as kohya stores it
    save_file(renamed, target)
    return target


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
    kohya = _kohya(unet_lora, tmp_path / "kohya.safetensors")
    convert(str(tiny_sd1), tmp_path / "out", "onnx", loras=[Lora(kohya, SCALE)], progress=lambda _: None)
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(tmp_path / "out", LoadOptions(compute_precision="f32"))
    ours = ours(PROMPT, steps=6, seed=1, scheduler="ddim", latents=latents).array
    assert float(np.abs(ours - _reference(tiny_sd1, unet_lora, latents)).max()) <= 2 / 255


def test_a_text_encoder_lora_fuses_as_its_sum(tiny_sd1, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.manual_seed(5)
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    weights = _random_lora(reference.text_encoder, "text_encoder", TEXT_TARGETS)
    lora = _save(weights, tmp_path / "te.safetensors", ("text_encoder",))
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
        ({"lora_te2_text_model_x.lora_down.weight": (4, 8)}, "keys sdcpu does not read: lora_te2_"),
        ({"lora_unet_x.hada_w1_a": (4, 8)}, "keys sdcpu does not read"),
    ],
)
def test_a_lora_for_something_else_is_refused(tiny_sd1, tmp_path, keys, message):
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, tmp_path / "other.safetensors")
    with pytest.raises(SdcpuError, match=message):
        convert(str(tiny_sd1), tmp_path / "out", loras=[Lora(tmp_path / "other.safetensors")], progress=lambda _: None)
    assert not (tmp_path / "out").exists()
