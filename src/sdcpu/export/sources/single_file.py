"""Original single-file checkpoints (`sd-v1-4.ckpt`, `v2-1_768-ema-pruned.safetensors`,
`sd_xl_base_1.0.safetensors`, ...).

Weights are renamed to diffusers' layout with diffusers' own conversion tables and built on the
architecture presets in `sdcpu.export.sources.presets` (or on the configs of a diffusers-format `config_dir`),
so nothing is downloaded. `.ckpt` files are pickles: they are read with `torch.load(weights_only=True)`,
and one that needs arbitrary code to unpickle is refused.

SDXL files (A1111's and Civitai's layout) hold their two text encoders under `conditioner.embedders.0`
(CLIP ViT-L, as transformers names it) and `conditioner.embedders.1` (OpenCLIP ViT-bigG, as open_clip
names it); the refiner's single text encoder is `conditioner.embedders.0`, in OpenCLIP's layout.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.export.controlnet_sources import controlnet_layout
from sdcpu.export.families import export_family
from sdcpu.export.preflight import check_json_files
from sdcpu.export.sources.base import Source, read_config
from sdcpu.export.sources.presets import PRESETS, Preset
from sdcpu.format.families import family_of
from sdcpu.format.safetensors import check_safetensors
from sdcpu.format.tokenizer_files import TOKENIZER_FILES, has_vocabulary

OPEN_CLIP_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
UNET_PREFIX = "model.diffusion_model."
SDXL_SECOND_ENCODER = "conditioner.embedders.1.model."
SDXL_REFINER_ENCODER = "conditioner.embedders.0.model."
TOKENIZER_REPOS = {
    "sd1": ("openai/clip-vit-large-patch14", None),
    "sd2": ("stabilityai/stable-diffusion-2-1", "tokenizer"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
}


def load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        check_family(check_safetensors(path))  # from the names alone, before gigabytes of weights are read
        return load_file(str(path))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message advises weights_only=False, the opposite of what to do with such a file.
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it calls {found.group(1)})" if found else ""
        raise SdcpuError(
            f"refusing to load {path.name}: it is a pickle that needs arbitrary code to load{what}. "
            "Get a .safetensors version of this checkpoint instead."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise SdcpuError(f"cannot read {path}: it is not a PyTorch checkpoint or is damaged ({err})") from err
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise SdcpuError(f"{path} holds no state dict")
    check_family(state)  # a pickle's names are known only once it is read
    return state


def check_family(keys: Iterable[str]) -> None:
    """Refuse, by the tensor names alone, a single file of a family sdcpu cannot convert (SDXL's refiner)."""
    if any(key.startswith(SDXL_REFINER_ENCODER) for key in keys):
        export_family("sdxl-refiner")


def detect_preset(state: dict[str, Any]) -> Preset:
    """SDXL checkpoints carry a second text encoder. SD 2 checkpoints carry an OpenCLIP text encoder; we
    then assume the 768 v-prediction model, as diffusers does (pass `preset="sd2-base"` for the 512
    epsilon one)."""
    if controlnet_layout(state) is not None:  # a .safetensors ControlNet never comes here (convert.py)
        raise SdcpuError(
            "this is a ControlNet in a pickle (.pth, .ckpt); sdcpu converts ControlNets from .safetensors files, "
            "diffusers folders or hub ids: get its .safetensors version"
        )
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise SdcpuError("this checkpoint has no Stable Diffusion UNet (no model.diffusion_model.* weights)")
    if any(k.startswith(SDXL_SECOND_ENCODER) for k in state):
        return PRESETS["sdxl"]
    return PRESETS["sd2-v"] if OPEN_CLIP_KEY in state else PRESETS["sd1"]


def _configs(preset: Preset, config_dir: Path | None) -> dict[str, dict[str, Any]]:
    configs = {
        "unet": preset.unet,
        "vae": preset.vae,
        "text_encoder": preset.text_encoder,
        "scheduler": preset.scheduler,
    }
    configs |= {"text_encoder_2": preset.text_encoder_2} if preset.text_encoder_2 is not None else {}
    if config_dir is None:
        return configs
    files = {
        "unet": "unet/config.json",
        "vae": "vae/config.json",
        "text_encoder": "text_encoder/config.json",
        "text_encoder_2": "text_encoder_2/config.json",
        "scheduler": "scheduler/scheduler_config.json",
    }
    for name, rel in files.items():
        if (config_dir / rel).exists():
            configs[name] = read_config(config_dir / rel)
    return configs


def open_single_file(
    path: Path,
    preset: str | None = None,
    config_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
    work_dir: Path | None = None,
) -> Source:
    """A Source for a single-file checkpoint; `work_dir` receives the tokenizer files it writes."""
    state = load_state_dict(path)
    if preset is not None and preset not in PRESETS:
        raise SdcpuError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset] if preset else detect_preset(state)
    for given in (config_dir, tokenizer_dir):
        if given is not None and given.is_dir():
            check_json_files(given)
    configs = _configs(chosen, config_dir)
    # The first convolution says what the UNet takes: 4 channels, or an inpainting model's 9 (and so on).
    conv_in = state.get(f"{UNET_PREFIX}input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in.shape) == 4:
        configs["unet"] = {**configs["unet"], "in_channels": int(conv_in.shape[1])}
    family = family_of(configs["unet"])
    export_family(family)  # a --config of an unsupported family
    tok_src = tokenizer_dir or (config_dir / "tokenizer" if config_dir else None) or _hub_tokenizer(family)
    assert work_dir is not None
    tokenizer = _write_tokenizer(tok_src, work_dir / "single_file_tokenizer", chosen.pad_token)
    # SDXL's second tokenizer is CLIP's vocabulary again, padding with "!" (token 0).
    second = work_dir / "single_file_tokenizer_2"
    more = {"tokenizer_2": _write_tokenizer(tok_src, second, "!", keep_pad=False)} if family == "sdxl" else {}

    def load(component: str) -> Any:
        return _build(component, state, configs, family)

    return Source(
        f"{path.resolve()} (preset {chosen.name})",
        family,
        configs["unet"],
        configs["vae"],
        configs["scheduler"],
        tokenizer,
        load,
        more_tokenizers=more,
    )


def _build(component: str, state: dict[str, Any], configs: dict[str, dict[str, Any]], family: str) -> Any:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model: Any
    if component == "text_encoder_2":  # SDXL's OpenCLIP ViT-bigG, with its projection
        model = CLIPTextModelWithProjection(CLIPTextConfig(**_clean(configs["text_encoder_2"])))
        weights = sfu.convert_open_clip_checkpoint(model, state, prefix=SDXL_SECOND_ENCODER)
    elif component == "unet":
        model = UNet2DConditionModel(**_clean(configs["unet"]))
        weights = sfu.convert_ldm_unet_checkpoint(state, dict(model.config))
    elif component == "vae":
        model = AutoencoderKL(**_clean(configs["vae"]))
        weights = sfu.convert_ldm_vae_checkpoint(state, dict(model.config))
    else:
        model = CLIPTextModel(CLIPTextConfig(**_clean(configs["text_encoder"])))
        if family == "sd2":
            weights = sfu.convert_open_clip_checkpoint(model, state)
        else:
            weights = sfu.convert_ldm_clip_checkpoint(state)
        weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise SdcpuError(
            f"the checkpoint's {component} does not fit the architecture chosen "
            f"({str(err).splitlines()[0]}); pass --preset or --config with the right architecture"
        ) from err
    return model.eval()


def _clean(config: dict[str, Any]) -> dict[str, Any]:
    drop = {"architectures", "model_type", "torch_dtype", "transformers_version"}
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in drop}


def _hub_tokenizer(family: str) -> Path:
    from huggingface_hub import snapshot_download

    repo, sub = TOKENIZER_REPOS.get(family, TOKENIZER_REPOS["sd1"])
    patterns = [f"{sub}/{f}" if sub else f for f in TOKENIZER_FILES]
    try:
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:  # offline, or not in the local hub cache
        raise SdcpuError(
            f"a single-file checkpoint has no tokenizer, and {repo} could not be fetched or found in the "
            f"local Hugging Face cache ({type(err).__name__}); pass --tokenizer DIR, a folder with the CLIP "
            "vocab.json and merges.txt or a tokenizer.json (the tokenizer/ folder of any Stable Diffusion "
            "diffusers model)"
        ) from err
    return folder / sub if sub else folder


def _write_tokenizer(source: Path, target: Path, pad_token: str, keep_pad: bool = True) -> Path:
    """CLIP's tokenizer files from `source`, configured to pad with `pad_token` unless the source's own
    config names one and `keep_pad`."""
    target.mkdir(parents=True, exist_ok=True)
    if not has_vocabulary(source):
        raise SdcpuError(
            f"{source} is not a CLIP tokenizer folder: it needs vocab.json and merges.txt, or tokenizer.json"
        )
    for name in ("vocab.json", "merges.txt", "tokenizer.json"):
        if (source / name).is_file():
            (target / name).write_bytes((source / name).read_bytes())
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "do_lower_case": True,
    }
    # The length and padding the tokenizer files give win over CLIP's defaults: a model trained with
    # shorter prompts (the demo model: 16 tokens) has a text encoder with that many positions.
    if (source / "tokenizer_config.json").is_file():
        given = read_config(source / "tokenizer_config.json")
        kept = ("model_max_length", "pad_token") if keep_pad else ("model_max_length",)
        config |= {key: given[key] for key in kept if key in given}
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return target
