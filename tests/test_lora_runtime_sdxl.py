"""LoRAs at run time on the tiny SDXL pipeline (OpenVINO, f32 compute): a kohya file naming the UNet's
layers as SGM does against diffusers' `load_lora_weights` + `set_adapters`, unfused; a LoRA for both
text encoders against its sum written out in torch; an SD 1.x LoRA refused by name."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

import loras  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

pytestmark = pytest.mark.parity
PROMPT = "a red circle on the left"
STEPS = 4


@pytest.fixture(scope="module")
def ours(sdxl_openvino):
    return Pipeline.load(sdxl_openvino, LoadOptions(compute_precision="f32", cache=False))


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)


def _reference(tiny_sdxl):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(pipe, latents):
    call = dict(num_inference_steps=STEPS, latents=torch.from_numpy(latents), output_type="np", height=64, width=64)
    return pipe(PROMPT, **call).images


def _ours(pipe, latents, lora_list=()):
    return pipe(PROMPT, steps=STEPS, seed=1, scheduler="ddim", latents=latents, loras=lora_list).array


def test_a_kohya_sgm_unet_lora_matches_diffusers_set_adapters(ours, tiny_sdxl, latents, tmp_path):
    reference = _reference(tiny_sdxl)
    torch.manual_seed(6)
    weights = loras.random_lora(reference.unet, "unet", loras.UNET_TARGETS)
    peft = loras.save_peft(weights, tmp_path / "unet.safetensors", ("unet",))
    kohya = loras.sgm(peft, reference.unet.config, tmp_path / "sgm.safetensors")
    plain = _theirs(reference, latents)
    reference.load_lora_weights(str(kohya), adapter_name="sgm")
    reference.set_adapters(["sgm"], adapter_weights=[0.7])
    theirs = _theirs(reference, latents)
    assert float(np.abs(theirs - plain).max()) > 0.05
    assert float(np.abs(_ours(ours, latents, [(kohya, 0.7)]) - theirs).max()) <= 2 / 255


def test_a_lora_for_both_text_encoders_matches_its_sum(ours, tiny_sdxl, latents, tmp_path):
    reference = _reference(tiny_sdxl)
    torch.manual_seed(7)
    kohya = {}
    for network, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        model = getattr(reference, network)
        weights = loras.random_lora(model, network, loras.TEXT_TARGETS)
        deltas = {}
        for name, _ in loras.layers(model, loras.TEXT_TARGETS):
            down, up = weights[f"{network}.{name}.lora_A.weight"], weights[f"{network}.{name}.lora_B.weight"]
            deltas[name] = up @ down * loras.ALPHA / loras.RANK
            stem = prefix + name.replace(".", "_")
            kohya |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up}
            kohya[f"{stem}.alpha"] = torch.tensor(loras.ALPHA)
        loras.add_deltas(model, deltas, 0.9)
    save_file(kohya, tmp_path / "te.safetensors")
    theirs = _theirs(reference, latents)
    assert float(np.abs(_ours(ours, latents, [(tmp_path / "te.safetensors", 0.9)]) - theirs).max()) <= 2 / 255


def test_an_sd1_lora_is_refused_by_an_sdxl_model(ours, tiny_sd1, latents, tmp_path):
    """Layers of the same name and another width (SD 1's cross-attention reads other text): named."""
    import tiny

    torch.manual_seed(3)
    weights = loras.random_lora(tiny.diffusers_pipeline(tiny_sd1).unet, "unet", ("attn2.to_k",))
    sd1 = loras.save_peft(weights, tmp_path / "sd1.safetensors", ("unet",))
    with pytest.raises(SdcpuError, match="does not fit this model|adapts no layer of this model's unet"):
        _ours(ours, latents, [(sd1, 1.0)])
