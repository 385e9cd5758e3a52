"""Architecture presets for single-file Stable Diffusion checkpoints (`.ckpt` / `.safetensors`).

An original (CompVis / Stability) checkpoint holds weights only. These are the diffusers configs of
the three families it can be, written out here so that conversion works offline:

- `sd1`: SD 1.x (CLIP ViT-L/14 text encoder, 512 px, epsilon prediction);
- `sd2-base`: SD 2.x base (OpenCLIP ViT-H/14 text encoder, 512 px, epsilon prediction);
- `sd2-v`: SD 2.x 768 (as `sd2-base`, but 768 px and v-prediction);
- `sdxl`: SDXL 1.0 base (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 with projection, 1024 px, epsilon
  prediction; Euler over "leading" timesteps). Its distilled and Turbo variants share the text encoders
  and VAE: pass their configs with `--config` where the UNet or the scheduler differs.

Each preset is frozen; variants are made with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "sample_size": 64,
    "use_linear_projection": False,
    "upcast_attention": False,
}

_CLIP_L = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "vocab_size": 49408,
    "layer_norm_eps": 1e-5,
}

# OpenCLIP ViT-H/14 without its last layer: SD 2 conditions on the penultimate layer's output.
_OPEN_CLIP_H = {
    **_CLIP_L,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}

_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}


# SDXL 1.0 base (https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0, its configs).
_SDXL_UNET = {
    **_UNET,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,  # CLIP ViT-L's 768 and OpenCLIP ViT-bigG's 1280, concatenated
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "sample_size": 128,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 size and crop numbers x 256, and the 1280 pooled text
}
_OPEN_CLIP_BIG_G = {
    **_CLIP_L,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}
_SDXL_SCHEDULER = {
    **_SCHEDULER,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    pad_token: str  # SD 1 pads prompts with <|endoftext|>, SD 2 with "!"
    text_encoder_2: dict[str, Any] | None = None  # SDXL's second (its tokenizer pads with "!")

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler["prediction_type"])


SD1 = Preset("sd1", _UNET, _VAE, _CLIP_L, _SCHEDULER, pad_token="<|endoftext|>")
SD2_BASE = dataclasses.replace(
    SD1,
    name="sd2-base",
    unet={**_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True},
    text_encoder=_OPEN_CLIP_H,
    pad_token="!",
)
SD2_V = dataclasses.replace(
    SD2_BASE,
    name="sd2-v",
    unet={**SD2_BASE.unet, "sample_size": 96, "upcast_attention": True},
    vae={**_VAE, "sample_size": 768},
    scheduler={**_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"},
)

SDXL = Preset(
    "sdxl",
    _SDXL_UNET,
    {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    _CLIP_L,
    _SDXL_SCHEDULER,
    pad_token="<|endoftext|>",
    text_encoder_2=_OPEN_CLIP_BIG_G,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (SD1, SD2_BASE, SD2_V, SDXL)}
