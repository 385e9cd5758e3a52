"""Tiny random-weight Stable Diffusion pipelines with the real building blocks, for tests.

torch, diffusers and sdcpu.export are imported inside the functions that need them, so that the
torch-free tests can import this module in a runtime-only install.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference-configs"
# Exports of one tiny pipeline by optimum-intel and optimum, made by tools/make_interop_fixtures.py.
INTEROP = Path(__file__).resolve().parent / "data" / "interop"
SD1_TOKENIZER = REFERENCE / "stable-diffusion-v1-4" / "tokenizer"

SD1_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# sdcpu scheduler name -> the diffusers class (and config overrides) it reproduces
DIFFUSERS_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
}
SD2_V_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}

UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=32,
)
VAE = dict(
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
TEXT: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=49408 if SD1_TOKENIZER.exists() else 514,
    bos_token_id=49406 if SD1_TOKENIZER.exists() else 512,
    eos_token_id=49407 if SD1_TOKENIZER.exists() else 513,
    max_position_embeddings=77,
    projection_dim=32,
)


UPSCALER_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
LOW_RES_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "variance_type": "fixed_small",
}
# task -> UNet config changes, VAE config changes (the x4 upscaler's VAE upsamples 4x: three levels)
TASKS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text-to-image": ({}, {}),
    "inpainting": ({"in_channels": 9}, {}),
    "depth-to-image": ({"in_channels": 5}, {}),
    "upscaling": (
        {"in_channels": 7, "num_class_embeds": 1000},
        {
            "block_out_channels": (8, 16, 16),
            "down_block_types": ("DownEncoderBlock2D",) * 3,
            "up_block_types": ("UpDecoderBlock2D",) * 3,
            "sample_size": 32,
            "scaling_factor": 0.08333,
        },
    ),
}


def build_components(seed: int = 0, v_prediction: bool = False, task: str = "text-to-image"):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet_config = dict(UNET, use_linear_projection=True, upcast_attention=True) if v_prediction else UNET
    unet_changes, vae_changes = TASKS[task]
    unet: Any = UNet2DConditionModel(**{**unet_config, **unet_changes})
    vae: Any = AutoencoderKL(**{**VAE, **vae_changes})
    text_encoder: Any = CLIPTextModel(CLIPTextConfig(**TEXT))
    for model in (unet, vae, text_encoder):
        model.eval()
    _unit_spread(unet)
    return text_encoder, unet, vae


def _unit_spread(unet) -> None:
    """A random UNet predicts almost no noise, which makes every scheduler give the same picture;
    scale conv_out so that its prediction has unit spread and schedulers can be told apart."""
    import torch

    with torch.no_grad():
        size = unet.config.sample_size
        sample = torch.randn(2, unet.config.in_channels, size, size)
        labels = torch.tensor([20, 20]) if unet.config.num_class_embeds else None
        added = None
        if unet.config.addition_embed_type == "text_time":  # SDXL: the pooled text and the time ids
            pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
            added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        hidden = torch.randn(2, 77, unet.config.cross_attention_dim)
        out = unet(sample, 500, hidden, class_labels=labels, added_cond_kwargs=added).sample
        scale = 1.0 / float(out.std())
        unet.conv_out.weight.mul_(scale)
        unet.conv_out.bias.mul_(scale)


def write_diffusers_folder(
    folder: Path, seed: int = 0, v_prediction: bool = False, task: str = "text-to-image"
) -> Path:
    """A tiny random pipeline for `task`: "inpainting" gives its UNet the 9 input channels of SD inpainting,
    "upscaling" makes the x4 upscaler (7 channels, the noise level as class label, a 4x VAE)."""
    from sdcpu.export.convert import model_index

    text_encoder, unet, vae = build_components(seed, v_prediction, task)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    write_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True)
    scheduler = SD2_V_SCHEDULER if v_prediction else SD1_SCHEDULER
    if task == "upscaling":
        scheduler = UPSCALER_SCHEDULER
        (folder / "low_res_scheduler").mkdir(parents=True)
        (folder / "low_res_scheduler" / "scheduler_config.json").write_text(json.dumps(LOW_RES_SCHEDULER))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    import diffusers

    index = model_index(scheduler["_class_name"], task) | {"_diffusers_version": diffusers.__version__}
    if task == "upscaling":
        index |= {"low_res_scheduler": ["diffusers", "DDPMScheduler"], "max_noise_level": 350}
    if task == "depth-to-image":
        write_depth_estimator(folder, seed)
        index |= {"depth_estimator": ["transformers", "DPTForDepthEstimation"]}
        index |= {"feature_extractor": ["transformers", "DPTImageProcessor"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


DEPTH_PROCESSOR = {
    "do_normalize": True,
    "do_resize": True,
    "ensure_multiple_of": 1,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_processor_type": "DPTImageProcessor",
    "keep_aspect_ratio": False,
    "resample": 3,
    "size": {"height": 32, "width": 32},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
}


def write_depth_estimator(folder: Path, seed: int) -> None:
    """A tiny DPT-Hybrid (BiT backbone, as SD 2 depth's) and its image processor, as diffusers' own tests build."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(seed)
    backbone = {
        "global_padding": "same",
        "layer_type": "bottleneck",
        "depths": [3, 4, 9],
        "out_features": ["stage1", "stage2", "stage3"],
        "embedding_dynamic_padding": True,
        "hidden_sizes": [96, 192, 384, 768],
        "num_groups": 2,
    }
    config = DPTConfig(
        image_size=32,
        patch_size=16,  # the BiT backbone's output stride, as in SD 2 depth's DPT
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        backbone_out_indices=(0, 1, 2, 3),
        num_attention_heads=4,
        intermediate_size=37,
        hidden_act="gelu",
        is_hybrid=True,
        backbone_config=backbone,
        backbone_featmap_shape=[1, 384, 24, 24],
    )
    DPTForDepthEstimation(config).eval().save_pretrained(folder / "depth_estimator")
    (folder / "feature_extractor").mkdir(parents=True)
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(DEPTH_PROCESSOR))


TINY_VAE = dict(
    encoder_block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8),
    num_encoder_blocks=(1, 1, 1, 1),
    num_decoder_blocks=(1, 1, 1, 1),
    latent_channels=4,
)


def write_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A random AutoencoderTiny (TAESD's architecture, narrower) in diffusers' layout."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(**TINY_VAE).eval().save_pretrained(folder)
    return folder


def write_tokenizer(folder: Path) -> None:
    """The real CLIP tokenizer where ../shared has it; else a byte-level one in CLIP's format (no merges)."""
    if SD1_TOKENIZER.exists():
        shutil.copytree(SD1_TOKENIZER, folder)
        return
    # GPT-2's byte-to-unicode table, which CLIP's byte-level BPE uses.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_tokenizer_json_only(source: Path, target: Path) -> Path:
    """`source`'s tokenizer as transformers 5 saves it: tokenizer.json and tokenizer_config.json only."""
    from transformers import CLIPTokenizer

    CLIPTokenizer.from_pretrained(source).save_pretrained(target)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        (target / name).unlink(missing_ok=True)
    assert (target / "tokenizer.json").is_file()
    return target


def diffusers_pipeline(folder: Path, scheduler_class: str | None = None, **scheduler_overrides):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    if scheduler_class is not None:
        cls = getattr(diffusers, scheduler_class)
        # Overrides as keyword arguments: in a dict, keys the config file left to their defaults (listed in
        # its `_use_default_values`) would be reset to the new class's defaults.
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **scheduler_overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# SDXL base's scheduler config (Euler over "leading" timesteps).
SDXL_SCHEDULER = {
    **SD1_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}
SDXL_UNET = dict(
    UNET,
    cross_attention_dim=64,  # the two text encoders' hidden states, concatenated
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,  # six size and crop numbers, and the pooled text
    transformer_layers_per_block=1,
)


def canonical_clip_keys(path: Path) -> None:
    """Rewrite a CLIPTextModel's safetensors under the `text_model.` keys every transformers version reads
    (5.2x saves them without it, and 5.5, which the peers' environments pin, then loads random weights)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()}, str(path))


def write_sdxl_folder(folder: Path, seed: int = 0, task: str = "text-to-image", scheduler: dict | None = None) -> Path:
    """A tiny random pipeline of SDXL's architecture, as diffusers saves one: two tokenizers (the second
    pads with "!", as SDXL's does) and text encoders (the second with a projection), a UNet that takes the
    pooled text and the time ids. "inpainting" gives the UNet SDXL inpainting's 9 input channels."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdcpu.export.convert import model_index

    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(**{**SDXL_UNET, **TASKS[task][0]}).eval()
    _unit_spread(unet)
    unet.save_pretrained(folder / "unet")
    AutoencoderKL(**VAE).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(folder / "text_encoder")
    canonical_clip_keys(folder / "text_encoder" / "model.safetensors")
    CLIPTextModelWithProjection(CLIPTextConfig(**TEXT)).save_pretrained(folder / "text_encoder_2")
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / "tokenizer_2" / name).is_file():
            config = json.loads((folder / "tokenizer_2" / name).read_text())
            (folder / "tokenizer_2" / name).write_text(json.dumps(config | {"pad_token": "!"}))
    (folder / "scheduler").mkdir()
    scheduler = scheduler or SDXL_SCHEDULER
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = model_index(scheduler["_class_name"], task, "sdxl") | {"_diffusers_version": diffusers.__version__}
    (folder / "model_index.json").write_text(json.dumps(index | {"force_zeros_for_empty_prompt": True}))
    return folder


def diffusers_inpaint(
    folder, monkeypatch, seed, unused_draws, scheduler, pipeline="StableDiffusionInpaintPipeline", **call
):
    """diffusers' pipeline drawing what ours draws from numpy: the first VAE sample from our generator,
    then `unused_draws` VAE samples that ours skips, then the scheduler's noise from our generator."""
    import diffusers
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a
    import torch

    rng = np.random.default_rng(seed)
    queue = iter(
        [rng.standard_normal((1, 4, 8, 8), dtype=np.float32)] + [np.zeros((1, 4, 8, 8), np.float32)] * unused_draws
    )

    def queued(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(next(queue))

    def numpy_noise(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    monkeypatch.setattr(vae_module, "randn_tensor", queued)
    monkeypatch.setattr(euler_a, "randn_tensor", numpy_noise)
    checker = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    cls = getattr(diffusers, pipeline)
    pipe = cls.from_pretrained(folder, **(checker if "XL" not in pipeline else {}))
    class_name, overrides = DIFFUSERS_SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe("a blue square", output_type="np", height=64, width=64, **call).images


def numpy_scheduler_noise(monkeypatch, seed: int) -> None:
    """diffusers' schedulers draw their noise from torch: make them draw what sdcpu draws from numpy."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a
    import diffusers.schedulers.scheduling_lcm as lcm
    import torch

    rng = np.random.default_rng(seed)

    def numpy_noise(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    for module in (euler_a, lcm):
        monkeypatch.setattr(module, "randn_tensor", numpy_noise)


def write_controlnet(
    folder: Path, seed: int = 0, source_seed: int = 0, sdxl: bool = False, unet_folder: Path | None = None
) -> Path:
    """A tiny random ControlNet for the tiny SD 1.x UNet, the tiny SDXL one, or the UNet saved in
    `unet_folder` (diffusers' `ControlNetModel.from_unet`), with its zero-initialised output convolutions made
    random, so that its residuals change the image."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet: Any
    if unet_folder is not None:
        unet = UNet2DConditionModel.from_pretrained(unet_folder)
    elif sdxl:
        unet = UNet2DConditionModel(**SDXL_UNET)
    else:
        _, unet, _ = build_components(source_seed)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    zero_convolutions = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in [*zero_convolutions, controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(0, 0.1)
            conv.bias.normal_(0, 0.02)
    controlnet.eval().save_pretrained(folder)
    return folder


def diffusers_controlnet_pipeline(
    folder: Path, controlnets: list[Path], scheduler_class: str | None = None, kind: str = "StableDiffusion"
):
    """diffusers' StableDiffusionControlNetPipeline (`kind` "StableDiffusionXL": its SDXL one) of the tiny
    pipeline in `folder`, with these ControlNets."""
    import diffusers

    nets = [diffusers.ControlNetModel.from_pretrained(path) for path in controlnets]
    sd = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = getattr(diffusers, f"{kind}ControlNetPipeline").from_pretrained(
        folder, controlnet=nets[0] if len(nets) == 1 else nets, **(sd if kind == "StableDiffusion" else {})
    )
    if scheduler_class is not None:
        pipe.scheduler = getattr(diffusers, scheduler_class).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe
