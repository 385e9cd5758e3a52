"""The original (LDM / SGM) names of a diffusers UNet's layers: single-file checkpoints and kohya's SDXL
LoRAs (`lora_unet_input_blocks_4_1_...`) name them so. After diffusers' script
`convert_diffusers_to_original_stable_diffusion.py`, generalised to any block count and depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
UNET_FIXED = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]


# SDXL's embedding of the pooled text and the time ids
ADDED_EMBEDDING = [("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]


def unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) of every block of a UNet of this diffusers config."""
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    pairs = list(UNET_FIXED) + (ADDED_EMBEDDING if config.get("addition_embed_type") == "text_time" else [])
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(layers):
            pairs.append((f"input_blocks.{i * (layers + 1) + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if kind.startswith("CrossAttn"):
                pairs.append((f"input_blocks.{i * (layers + 1) + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(i + 1) * (layers + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i, kind in enumerate(config["up_block_types"]):
        has_attention = kind.startswith("CrossAttn")
        for j in range(layers + 1):
            pairs.append((f"output_blocks.{i * (layers + 1) + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if has_attention:
                pairs.append((f"output_blocks.{i * (layers + 1) + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            slot = 2 if has_attention else 1
            pairs.append((f"output_blocks.{i * (layers + 1) + layers}.{slot}.", f"up_blocks.{i}.upsamplers.0."))
    pairs += [
        ("middle_block.1.", "mid_block.attentions.0."),
        ("middle_block.0.", "mid_block.resnets.0."),
        ("middle_block.2.", "mid_block.resnets.1."),
    ]
    return pairs


def unet_original_names(names: list[str], config: Mapping[str, Any]) -> dict[str, str]:
    """{diffusers module or weight name: its original name} for the names of a UNet of `config`."""
    prefixes = sorted(unet_prefixes(config), key=lambda p: -len(p[1]))
    out = {}
    for name in names:
        found = next((p for p in prefixes if (name + ".").startswith(p[1])), None)
        if found is None:
            continue
        sd_prefix, hf_prefix = found
        rest = (name + ".")[len(hf_prefix) :]
        if "resnets" in hf_prefix:
            for sd_name, hf_name in RESNET:
                rest = rest.replace(hf_name, sd_name)
        out[name] = (sd_prefix + rest).rstrip(".")
    return out
