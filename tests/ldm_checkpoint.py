"""diffusers -> original (LDM) key layout, to build single-file checkpoints for tests.

The inverse of diffusers' single-file conversion, after diffusers' script
`convert_diffusers_to_original_stable_diffusion.py`, generalised to any block count and depth.
"""

from __future__ import annotations

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
VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


# SDXL's embedding of the pooled text and the time ids
ADDED_EMBEDDING = [("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")]
# transformers' CLIP layer names -> open_clip's (SD 2's and SDXL's OpenCLIP encoders)
OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2.")]
OPEN_CLIP_LAYER += [("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def _unet_prefixes(config) -> list[tuple[str, str]]:
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


def unet_to_ldm(state, config) -> dict:
    out = {}
    prefixes = sorted(_unet_prefixes(config), key=lambda p: -len(p[1]))
    for key, value in state.items():
        sd_prefix, hf_prefix = next(p for p in prefixes if key.startswith(p[1]))
        rest = key[len(hf_prefix) :]
        if "resnets" in hf_prefix:
            for sd_name, hf_name in RESNET:
                rest = rest.replace(hf_name, sd_name)
        out["model.diffusion_model." + sd_prefix + rest] = value
    return out


def vae_to_ldm(state, config) -> dict:
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    pairs = [
        ("mid.attn_1.", "mid_block.attentions.0."),
        ("mid.block_1.", "mid_block.resnets.0."),
        ("mid.block_2.", "mid_block.resnets.1."),
        ("norm_out.", "conv_norm_out."),
    ]
    for i in range(levels):
        pairs += [(f"down.{i}.block.{j}.", f"down_blocks.{i}.resnets.{j}.") for j in range(layers)]
        pairs += [(f"up.{levels - 1 - i}.block.{j}.", f"up_blocks.{i}.resnets.{j}.") for j in range(layers + 1)]
        if i < levels - 1:
            pairs += [
                (f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."),
                (f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."),
            ]
    out = {}
    for key, value in state.items():
        new = key
        for sd_name, hf_name in pairs:
            new = new.replace(hf_name, sd_name)
        new = new.replace("conv_shortcut", "nin_shortcut")
        if "attn_1" in new:
            for sd_name, hf_name in VAE_ATTN:
                new = new.replace(hf_name, sd_name)
            if value.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def sd1_checkpoint(text_encoder, unet, vae) -> dict:
    state = {"cond_stage_model.transformer." + k: v for k, v in text_encoder.state_dict().items()}
    state.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    return {k: v.contiguous() for k, v in state.items()}


def open_clip_to_ldm(text_encoder, prefix: str) -> dict:
    """A transformers CLIPTextModelWithProjection in open_clip's layout (q, k and v as one in_proj)."""
    import torch

    state = text_encoder.state_dict()
    out = {
        prefix + "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        prefix + "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": state["text_model.final_layer_norm.weight"],
        prefix + "ln_final.bias": state["text_model.final_layer_norm.bias"],
        prefix + "text_projection": state["text_projection.weight"].T,
    }
    for i in range(text_encoder.config.num_hidden_layers):
        hf, sd = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{hf}self_attn.{name}_proj.{kind}"] for name in ("q", "k", "v")]
            out[f"{sd}attn.in_proj_{kind}"] = torch.cat(qkv)
            for hf_name, sd_name in OPEN_CLIP_LAYER:
                out[f"{sd}{sd_name}{kind}"] = state[f"{hf}{hf_name}{kind}"]
    return out


def sdxl_checkpoint(text_encoder, text_encoder_2, unet, vae) -> dict:
    """SDXL in A1111's layout: its text encoders under conditioner.embedders.0 and .1."""
    state = {"conditioner.embedders.0.transformer." + k: v for k, v in text_encoder.state_dict().items()}
    state.update(open_clip_to_ldm(text_encoder_2, "conditioner.embedders.1.model."))
    state.update(unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_ldm(vae.state_dict(), dict(vae.config)))
    return {k: v.contiguous() for k, v in state.items()}
