"""Random LoRA files for the tests, in each layout sdcpu reads, and their updates written out in torch
(the reference sum W + scale · ΔW where diffusers cannot read a format)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")  # Linear, 1x1 and 3x3 Conv2d
TEXT_TARGETS = ("q_proj", "v_proj")
RANK, ALPHA = 4, 8.0


def layers(model, targets: tuple[str, ...]):
    """(name, module) of the Linear and Conv2d layers of `model` whose names end with one of `targets`."""
    for name, module in model.named_modules():
        if name.endswith(targets) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name, module


def random_lora(model, network: str, targets: tuple[str, ...], rank: int = RANK) -> dict:
    """diffusers' (PEFT's) layout: lora_A is the down projection (a Conv2d with the layer's kernel for
    convolutions: a LoCon), lora_B the up projection."""
    weights = {}
    for name, module in layers(model, targets):
        out, inp, *kernel = module.weight.shape
        weights[f"{network}.{name}.lora_A.weight"] = torch.randn(rank, inp, *kernel) * 0.2
        weights[f"{network}.{name}.lora_B.weight"] = torch.randn(out, rank, *([1, 1] if kernel else [])) * 0.2
    return weights


def save_peft(weights: dict, path: Path, networks: tuple[str, ...]) -> Path:
    """PEFT's adapter config as diffusers writes it into the file's metadata, flattened with a prefix."""
    config = {}
    for n in networks:
        modules = sorted({k.split(".", 1)[1].rsplit(".lora_", 1)[0] for k in weights if k.startswith(n + ".")})
        config |= {f"{n}.r": RANK, f"{n}.lora_alpha": ALPHA, f"{n}.target_modules": modules}
    save_file(weights, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(config)})
    return path


def kohya(diffusers_file: Path, target: Path) -> Path:
    """The same weights in kohya's layout: underscored module names, lora_down/lora_up, and each alpha."""
    renamed = {}
    for key, tensor in load_file(diffusers_file).items():
        network, rest = key.split(".", 1)
        module, part = rest.rsplit(".lora_", 1)
        stem = ("lora_unet_" if network == "unet" else "lora_te_") + module.replace(".", "_")
        renamed[f"{stem}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        renamed[f"{stem}.alpha"] = torch.tensor(ALPHA)  # the metadata's alpha, per layer as kohya stores it
    save_file(renamed, target)
    return target


def loha(model, prefix: str, targets: tuple[str, ...], path: Path) -> dict[str, torch.Tensor]:
    """A random LyCORIS LoHa file at `path`; returns {module name: ΔW}, written out as LyCORIS computes
    it: (w1a w1b) ⊙ (w2a w2b) · alpha / rank, reshaped to the weight."""
    tensors, deltas = {}, {}
    for name, module in layers(model, targets):
        out, size = module.weight.shape[0], module.weight[0].numel()
        w1a, w1b = torch.randn(out, RANK) * 0.3, torch.randn(RANK, size) * 0.3
        w2a, w2b = torch.randn(out, RANK) * 0.3, torch.randn(RANK, size) * 0.3
        stem = prefix + name.replace(".", "_")
        tensors |= {f"{stem}.hada_w1_a": w1a, f"{stem}.hada_w1_b": w1b, f"{stem}.hada_w2_a": w2a}
        tensors |= {f"{stem}.hada_w2_b": w2b, f"{stem}.alpha": torch.tensor(ALPHA)}
        deltas[name] = ((w1a @ w1b) * (w2a @ w2b) * ALPHA / RANK).reshape(module.weight.shape)
    save_file(tensors, path)
    return deltas


def lokr(model, prefix: str, targets: tuple[str, ...], path: Path) -> dict[str, torch.Tensor]:
    """A random LyCORIS LoKr file at `path` (w1 whole, w2 factored), returns {module name: ΔW}:
    kron(w1, w2a w2b) · alpha / rank, reshaped to the weight."""
    tensors, deltas = {}, {}
    for name, module in layers(model, targets):
        out, size = module.weight.shape[0], module.weight[0].numel()
        a, b = _factor(out), _factor(size)
        w1 = torch.randn(a, b) * 0.3
        w2a, w2b = torch.randn(out // a, RANK) * 0.3, torch.randn(RANK, size // b) * 0.3
        stem = prefix + name.replace(".", "_")
        tensors |= {f"{stem}.lokr_w1": w1, f"{stem}.lokr_w2_a": w2a, f"{stem}.lokr_w2_b": w2b}
        tensors[f"{stem}.alpha"] = torch.tensor(ALPHA)
        deltas[name] = (torch.kron(w1, w2a @ w2b) * ALPHA / RANK).reshape(module.weight.shape)
    save_file(tensors, path)
    return deltas


def _factor(n: int) -> int:
    # the smallest factor above 1 of n (2 for the tiny models' even widths)
    return next(f for f in range(2, n + 1) if n % f == 0)


def add_deltas(model, deltas: dict[str, torch.Tensor], scale: float) -> None:
    """W += scale · ΔW in place, for the reference pipeline."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            modules[name].weight += scale * delta


def sgm(diffusers_file: Path, config, target: Path) -> Path:
    """The same UNet LoRA as kohya's SDXL files name it (original SGM layer names, underscored)."""
    from sdcpu.format.ldm_names import unet_original_names

    weights = load_file(diffusers_file)
    modules = sorted({key.split(".", 1)[1].rsplit(".lora_", 1)[0] for key in weights})
    original = unet_original_names(modules, config)
    renamed = {}
    for module in modules:
        stem = "lora_unet_" + original[module].replace(".", "_")
        renamed[f"{stem}.lora_down.weight"] = weights[f"unet.{module}.lora_A.weight"]
        renamed[f"{stem}.lora_up.weight"] = weights[f"unet.{module}.lora_B.weight"]
        renamed[f"{stem}.alpha"] = torch.tensor(ALPHA)
    save_file(renamed, target)
    return target
