"""LoRA weights fused into the networks before export (Hu et al., https://arxiv.org/abs/2106.09685):
W' = W + scale * (alpha / rank) * up @ down for each adapted Linear or Conv2d. Fused, the graphs run at
the base model's cost, in any tool that reads them, and the manifest records each file and scale.

Two layouts are read, from safetensors files only:
- diffusers and PEFT: `unet.<module>.lora_A.weight` (down) and `.lora_B.weight` (up); `text_encoder.`
  and SDXL's `text_encoder_2.` for the text encoders; alpha is the rank (PEFT's scale 1) unless the
  file's metadata says otherwise;
- kohya (A1111, ComfyUI): `lora_unet_<module, dots as underscores>.lora_down.weight`, `.lora_up.weight`
  and `.alpha`; `lora_te_` for SD 1.x/2.x's text encoder, `lora_te1_` and `lora_te2_` for SDXL's two.
  This is the layout LCM-LoRA files use too.
A LoRA for another family is refused by name: one that adapts a network the model lacks (an SDXL LoRA's
second text encoder, for SD 1.x), or a layer of another shape (an SD 1.x LoRA's cross-attention, 768
wide, for SDXL's 2048).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.ldm_names import unet_original_names
from sdcpu.format.manifest import sha256_file
from sdcpu.format.safetensors import check_safetensors
from sdcpu.runtime.lora.formats import PREFIXES, metadata_alpha

KNOWN_PREFIXES = tuple(prefix for prefixes in PREFIXES.values() for prefix in prefixes)
PARTS = {"lora_A": "down", "lora_down": "down", "lora_B": "up", "lora_up": "up"}
KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up)\.weight$|^(?P<alpha_of>.+)\.alpha$")


@dataclass(frozen=True)
class Lora:
    path: Path
    scale: float = 1.0

    def record(self) -> dict[str, Any]:
        """For the manifest: the file's name, sha256 and scale."""
        return {"file": self.path.name, "sha256": sha256_file(self.path), "scale": self.scale}


def check_loras(loras: list[Lora]) -> None:
    """Refuse, before any work, missing or unsafe files, keys of another kind (LoCon, LoHa, DoRA), and
    files that adapt no network of a Stable Diffusion family."""
    for lora in loras:
        if not lora.path.is_file():
            raise SdcpuError(f"--lora {lora.path} does not exist or is not a file")
        if lora.path.suffix != ".safetensors":
            raise SdcpuError(f"--lora {lora.path} is not a .safetensors file (pickled LoRAs are not read)")
        keys = check_safetensors(lora.path)  # the names alone: no tensor is read here
        found = [_groups(keys, network) for network in PREFIXES]
        unknown = sorted({key for _, missing in found for key in missing})
        if unknown:
            raise SdcpuError(f"--lora {lora.path.name} holds keys sdcpu does not read: {', '.join(unknown[:3])}")
        if not any(groups for groups, _ in found):
            raise SdcpuError(f"--lora {lora.path.name} adapts neither a UNet nor a text encoder of this layout")


def check_lora_networks(loras: list[Lora], networks: set[str], family: str) -> None:
    """Refuse a LoRA that adapts a network the model has not (an SDXL LoRA's second text encoder, given
    to an SD 1.x model), naming the family it is for."""
    for lora in loras:
        keys = check_safetensors(lora.path)
        adapted = {network for network in PREFIXES if _groups(keys, network)[0]}
        if adapted - networks:
            made_for = "Stable Diffusion XL" if "text_encoder_2" in adapted else "another family"
            lacking = ", ".join(sorted(adapted - networks))
            raise SdcpuError(
                f"--lora {lora.path.name} is a LoRA for {made_for} (it adapts {lacking}); "
                f"this model is {family}: use a LoRA made for it"
            )


def fuse_loras(model: Any, network: str, loras: list[Lora], warn: Callable[[str], None]) -> int:
    """Add each LoRA's products to `model` (the torch "unet" or "text_encoder") in place; returns the
    layers changed. A file that adapts none of the model's layers is refused; one whose layers are
    only partly found is fused with a warning naming those it could not place."""
    import torch

    changed = 0
    modules = _modules(model)
    for lora in loras:
        pairs = _pairs(lora, network)  # unknown keys were refused by check_loras
        missing = [name for name in pairs if name not in modules]
        if pairs and len(missing) == len(pairs):
            raise SdcpuError(
                f"--lora {lora.path.name} adapts no layer of this model's {network}; is it for another family?"
            )
        if missing:
            warn(
                f"--lora {lora.path.name}: {len(missing)} {network} layers not found, left as they are: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        for name, (down, up, _) in pairs.items():
            if name in modules:
                _check_shape(lora, network, name, modules[name], down, up)
        with torch.no_grad():
            for name, (down, up, alpha) in pairs.items():
                if name in modules:
                    _fuse(modules[name], down, up, lora.scale * alpha / down.shape[0])
                    if not bool(torch.isfinite(modules[name].weight).all()):  # a huge alpha or scale overflowed
                        raise SdcpuError(
                            f"--lora {lora.path.name} makes layer {name.removeprefix('kohya:')} overflow (its alpha "
                            f"{alpha:g} at scale {lora.scale:g}); the LoRA is damaged, or its scale too large"
                        )
                    changed += 1
    return changed


def check_lora_tensors(loras: list[Lora], networks: set[str]) -> None:
    """Read every LoRA's tensors for the model's `networks` and refuse NaN or Inf, an alpha that is not
    one number, and a down and up that are no low-rank pair, before the first network is exported."""
    for lora in loras:
        for network in sorted(networks & set(PREFIXES)):
            for name, (down, up, _) in _pairs(lora, network).items():
                _check_pair(lora, name.removeprefix("kohya:"), down, up)


def _check_pair(lora: Lora, layer: str, down: Any, up: Any) -> None:
    # up @ down is (out, rank) @ (rank, in * kh * kw); a convolution's up is (out, rank, 1, 1).
    if up.ndim not in (2, 4) or down.ndim not in (2, 4) or up[0].numel() != up.shape[1] or 0 in down.shape:
        raise SdcpuError(
            f"--lora {lora.path.name} is damaged: its layer {layer} has a down of shape {tuple(down.shape)} and "
            f"an up of shape {tuple(up.shape)}, which are not a low-rank pair"
        )


def _check_shape(lora: Lora, network: str, name: str, module: Any, down: Any, up: Any) -> None:
    # up @ down must have the layer's shape. Checked before anything is multiplied: a wrong shape is the
    # file's fault, named.
    weight, layer = module.weight, name.removeprefix("kohya:")
    _check_pair(lora, layer, down, up)
    if up.shape[0] != weight.shape[0] or down[0].numel() != weight[0].numel() or up.shape[1] != down.shape[0]:
        raise SdcpuError(
            f"--lora {lora.path.name} does not fit this model's {network}: its layer {layer} is "
            f"{up.shape[0]}x{down[0].numel()} in the LoRA and {weight.shape[0]}x{weight[0].numel()} here; "
            "is it for another family (SD 1.x, SD 2.x or SDXL)?"
        )


def _fuse(module: Any, down: Any, up: Any, scale: float) -> None:
    weight = module.weight
    delta = up.flatten(1).float() @ down.flatten(1).float()  # (out, rank) @ (rank, in * kh * kw)
    weight += (scale * delta).reshape(weight.shape).to(weight.dtype)


def _groups(keys: list[str], network: str) -> tuple[dict[str, dict[str, str]], list[str]]:
    # {layer as the file names it: {"down" | "up" | "alpha": key}} of one network, and the keys not understood
    # (of either network: another kind of adapter, another network, a down without its up).
    groups: dict[str, dict[str, str]] = {}
    unknown: list[str] = []
    for key in keys:
        match = KEY.match(key)
        name = (match["module"] or match["alpha_of"]) if match is not None else ""
        if match is None or not name.startswith(KNOWN_PREFIXES):
            unknown.append(key)
        elif name.startswith(PREFIXES[network]):  # else another network's
            groups.setdefault(name, {})[PARTS.get(match["part"], "alpha")] = key
    unknown += [name for name, parts in groups.items() if not {"down", "up"} <= set(parts)]
    return {name: parts for name, parts in groups.items() if {"down", "up"} <= set(parts)}, unknown


def _pairs(lora: Lora, network: str) -> dict[str, tuple[Any, Any, float]]:
    # {module name, in the model's dotted form: (down, up, alpha)} of one network.
    from safetensors import safe_open

    pairs = {}
    with safe_open(str(lora.path), framework="pt") as f:
        network_alpha = metadata_alpha(f.metadata() or {}, network)
        for name, parts in _groups(list(f.keys()), network)[0].items():
            down, up = f.get_tensor(parts["down"]), f.get_tensor(parts["up"])
            alpha = _alpha(lora, f.get_tensor(parts["alpha"])) if "alpha" in parts else None
            alpha = network_alpha or float(down.shape[0]) if alpha is None else alpha
            for part, tensor in (("down", down), ("up", up)):
                if not bool(tensor.float().isfinite().all()):
                    raise SdcpuError(f"--lora {lora.path.name} holds NaN or Inf in {parts[part]}; the LoRA is damaged")
            pairs[_module_name(name, PREFIXES[network])] = (down, up, alpha)
    return pairs


def _alpha(lora: Lora, tensor: Any) -> float:
    if tensor.numel() != 1 or not bool(tensor.float().isfinite().all()):
        raise SdcpuError(f"--lora {lora.path.name} is damaged: an alpha is not one finite number")
    return float(tensor)


def _module_name(name: str, prefixes: tuple[str, ...]) -> str:
    diffusers_prefix, *kohya_prefixes = prefixes
    if name.startswith(diffusers_prefix):
        return name[len(diffusers_prefix) :]
    kohya = next(prefix for prefix in kohya_prefixes if name.startswith(prefix))
    return "kohya:" + name[len(kohya) :]  # resolved against the model's names, underscored


def _modules(model: Any) -> dict[str, Any]:
    # Every Linear or Conv2d, by its dotted name and by kohya's underscored one; a UNet's also by the
    # original (SGM) name, underscored, which kohya's SDXL LoRAs use (lora_unet_input_blocks_4_1_...).
    import torch

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    config = getattr(model, "config", None)
    original = (
        unet_original_names(list(layers), config)
        if isinstance(config, Mapping) and "down_block_types" in config
        else {}
    )
    found = {}
    for name, module in layers.items():
        found[name] = module
        found["kohya:" + name.replace(".", "_")] = module
        if name in original:
            found["kohya:" + original[name].replace(".", "_")] = module
    return found
