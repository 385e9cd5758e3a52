"""Architecture presets for single-file Stable Diffusion checkpoints (`.ckpt` / `.safetensors`).

An original (CompVis / Stability) checkpoint holds weights only. These are the diffusers configs of
the three families it can be, written out here so that conversion works offline:

- `sd1`: SD 1.x (CLIP ViT-L/14 text encoder, 512 px, epsilon prediction);
- `sd2-base`: SD 2.x base (OpenCLIP ViT-H/14 text encoder, 512 px, epsilon prediction);
- `sd2-v`: SD 2.x 768 (as `sd2-base`, but 768 px and v-prediction).

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


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    pad_token: str  # SD 1 pads prompts with <|endoftext|>, SD 2 with "!"

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

PRESETS: dict[str, Preset] = {p.name: p for p in (SD1, SD2_BASE, SD2_V)}
