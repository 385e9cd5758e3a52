"""diffusers -> original (LDM) key layout, to build single-file checkpoints for tests.

The inverse of diffusers' single-file conversion, after diffusers' script
`convert_diffusers_to_original_stable_diffusion.py`, generalised to any block count and depth.
"""

from __future__ import annotations

from sdcpu.format.ldm_names import unet_original_names

VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
# transformers' CLIP layer names -> open_clip's (SD 2's and SDXL's OpenCLIP encoders)
OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2.")]
OPEN_CLIP_LAYER += [("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def unet_to_ldm(state, config) -> dict:
    names = unet_original_names(list(state), config)
    return {"model.diffusion_model." + names[key]: value for key, value in state.items()}


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


def controlnet_to_ldm(state, config, prefix: str = "control_model.") -> dict:
    """A diffusers ControlNetModel's weights in ControlNet v1.1's original layout (cldm's names)."""
    names = unet_original_names(list(state), {**config, "up_block_types": []})
    hint_blocks = len({key.split(".")[2] for key in state if key.startswith("controlnet_cond_embedding.blocks.")})
    renames = [
        ("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
        ("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * (hint_blocks + 1)}."),
        ("controlnet_mid_block.", "middle_block_out.0."),
    ]
    for i in range(hint_blocks):
        renames.append((f"controlnet_cond_embedding.blocks.{i}.", f"input_hint_block.{2 * (i + 1)}."))
    zero_convs = len({key.split(".")[1] for key in state if key.startswith("controlnet_down_blocks.")})
    renames += [(f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0.") for i in range(zero_convs)]
    out = {}
    for key, value in state.items():
        if key in names:  # the UNet encoder's
            out[prefix + names[key]] = value
            continue
        old, new = next((old, new) for old, new in renames if key.startswith(old))
        out[prefix + new + key[len(old) :]] = value
    return out
