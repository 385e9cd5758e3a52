"""Where a ControlNet comes from: a diffusers `ControlNetModel` folder, a hub id (export/sources/hub.py
fetches it as a folder), or a single `.safetensors` file, in either of the two layouts files are shared in:

- ControlNet v1.1's original one (`control_v11p_sd15_canny.safetensors`, A1111's `models/ControlNet`):
  the LDM UNet encoder's names (`input_blocks.*`, `middle_block.*`, `time_embed.*`), plus `zero_convs.*`,
  `middle_block_out.*` and the hint encoder `input_hint_block.*`, with or without the `control_model.`
  prefix of the training checkpoint. Renamed with diffusers' own table (`convert_controlnet_checkpoint`).
- diffusers' names in one file (`diffusers_xl_canny_full.safetensors` and most SDXL ControlNets).

A single file has no config: `controlnet_config` reads it from the tensors' shapes. The one thing shapes
cannot say is the attention heads; as in the original configs, a ControlNet of SD 1.x's text width (768)
has 8 heads and the others heads of 64 channels (SD 2.x, SDXL). `--config DIR` (a folder holding the
ControlNet's `config.json`) overrides all of it. A "shuffle" ControlNet pools its residuals, which its file
cannot say either: as A1111 does with the YAML file it ships beside it, the file's name decides.

Detection (`controlnet_layout`) reads the names alone, so it runs before torch is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.ldm_names import ADDED_EMBEDDING
from sdcpu.format.safetensors import check_safetensors

ORIGINAL_PREFIX = "control_model."  # ControlNet's training checkpoints (cldm) keep the network under it
ORIGINAL_MARK = "input_hint_block.0.weight"
DIFFUSERS_MARK = "controlnet_cond_embedding.conv_in.weight"
WEIGHTS = "diffusion_pytorch_model.safetensors"
FP16_WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"
SD1_TEXT_WIDTH, SD1_HEADS, HEAD_CHANNELS = 768, 8, 64
SDXL_TIME_EMBED_DIM = 256  # each of SDXL's six time ids is embedded in 256 sinusoidal channels


def is_controlnet_folder(path: Path) -> bool:
    """Whether `path` is a diffusers ControlNetModel folder (its config.json names the class)."""
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        return False
    try:
        return read_json_object(config).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError, AttributeError):
        return False


def controlnet_layout(names: Iterable[str]) -> str | None:
    """ "original" or "diffusers" for a single file's tensor names that make a ControlNet, else None."""
    names = set(names)
    if ORIGINAL_MARK in names or ORIGINAL_PREFIX + ORIGINAL_MARK in names:
        return "original"
    return "diffusers" if DIFFUSERS_MARK in names else None


def is_controlnet_file(path: Path) -> bool:
    """Whether `path` is a .safetensors file of a ControlNet (from its header; raises if it is damaged)."""
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return False
    return controlnet_layout(check_safetensors(path)) is not None


def is_controlnet(path: Path) -> bool:
    """A ControlNet folder or single file."""
    return is_controlnet_folder(path) or is_controlnet_file(path)


def load_controlnet(source: Path, config_dir: Path | None = None) -> Any:
    """The diffusers ControlNetModel of a folder or a single file; SdcpuError if it cannot be read."""
    from diffusers import ControlNetModel

    try:
        if source.is_dir():
            only_fp16 = not (source / WEIGHTS).is_file() and (source / FP16_WEIGHTS).is_file()
            return ControlNetModel.from_pretrained(source, variant="fp16" if only_fp16 else None).eval()
        state = _diffusers_state(source)
        given = _given_config(config_dir) if config_dir is not None else None
        config = given if given is not None else controlnet_config(_shapes(state), source.stem)
        model = ControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(state, strict=True)
        return model.eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "is it a complete diffusers folder?" if source.is_dir() else _FILE_HINT
        raise SdcpuError(f"cannot read the ControlNet in {source} ({first}); {hint}") from err


_FILE_HINT = (
    "if its architecture is unusual, give its diffusers config with --config DIR (a folder with the "
    "ControlNet's config.json)"
)


def _given_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise SdcpuError(f"--config {folder}: for a ControlNet file, a folder holding the ControlNet's config.json")
    config = dict(read_json_object(path))
    if config.get("_class_name", "ControlNetModel") != "ControlNetModel":
        raise SdcpuError(f"{path} is the config of a {config['_class_name']}, not of a ControlNetModel")
    return config


def _diffusers_state(path: Path) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    state = load_file(str(path))
    if controlnet_layout(state) == "diffusers":
        return state
    state = {k.removeprefix(ORIGINAL_PREFIX): v for k, v in state.items()}
    layers = _original_layers_per_block(state)
    converted = convert_controlnet_checkpoint(state, {"layers_per_block": layers})
    # SDXL's embedding of the pooled text and time ids, which diffusers' table leaves out
    for original, renamed in ADDED_EMBEDDING:
        for kind in ("weight", "bias"):
            if original + kind in state:
                converted[renamed + kind] = state[original + kind]
    return {k: v for k, v in converted.items() if v is not None}


def _original_layers_per_block(state: Mapping[str, Any]) -> int:
    # input_blocks: conv_in, then per level its resnets and (but on the last level) a downsampler
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))}
    downsamplers = {k for k in state if re.match(r"input_blocks\.\d+\.0\.op\.weight$", k)}
    levels = len(downsamplers) + 1
    if not blocks or (len(blocks) - levels) % levels:
        raise SdcpuError("this ControlNet file's input blocks do not make whole levels; is it complete?")
    return (len(blocks) - levels) // levels


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in tensor.shape) for name, tensor in state.items()}


def controlnet_config(shapes: Mapping[str, tuple[int, ...]], name: str = "") -> dict[str, Any]:
    """A ControlNetModel config from its weights' {diffusers name: shape}; `name` is the file's stem."""
    levels = len({m.group(1) for k in shapes if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    layers = len({m.group(1) for k in shapes if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
    widths = [shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    depths = [_transformer_depth(shapes, f"down_blocks.{i}.attentions.0.") for i in range(levels)]
    text = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), SD1_TEXT_WIDTH)
    # the hint encoder: conv_in, then pairs of convolutions, the second of each widening and halving
    blocks = len({m.group(1) for k in shapes if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))})
    hint = [shapes["controlnet_cond_embedding.conv_in.weight"][0]]
    hint += [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0] for i in range(1, blocks, 2)]
    config: dict[str, Any] = {
        "in_channels": shapes["conv_in.weight"][1],
        "conditioning_channels": shapes["controlnet_cond_embedding.conv_in.weight"][1],
        "conditioning_embedding_out_channels": hint,
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "layers_per_block": layers,
        "transformer_layers_per_block": [max(d, 1) for d in depths],
        "cross_attention_dim": text,
        "attention_head_dim": _heads(widths, depths, text),
        "use_linear_projection": any(k.endswith("proj_in.weight") and len(s) == 2 for k, s in shapes.items()),
        "global_pool_conditions": "shuffle" in name.lower(),
    }
    if "add_embedding.linear_1.weight" in shapes:  # SDXL: pooled text and time ids
        config |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
            "projection_class_embeddings_input_dim": shapes["add_embedding.linear_1.weight"][1],
        }
    return config


def _transformer_depth(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    return len({m.group(1) for k in shapes if (m := pattern.match(k))})


def _heads(widths: list[int], depths: list[int], text_width: int) -> int | list[int]:
    # diffusers' `attention_head_dim` counts heads (a misnomer it keeps for old configs)
    if text_width == SD1_TEXT_WIDTH:
        return SD1_HEADS
    attended = [w for w, d in zip(widths, depths, strict=True) if d]
    if any(w % HEAD_CHANNELS for w in attended):
        raise SdcpuError(
            f"cannot tell this ControlNet's attention heads: widths {widths} are not multiples of "
            f"{HEAD_CHANNELS} and its text width {text_width} is not SD 1.x's; {_FILE_HINT}"
        )
    return [max(w // HEAD_CHANNELS, 1) for w in widths]
