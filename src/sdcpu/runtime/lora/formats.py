"""LoRA files read into low-rank updates, torch-free: every adapted layer's weight change as
ΔW = scale · up @ down, with `down` (rank, in[, kh, kw]) and `up` (out, rank).

Read from safetensors files only (pickles are refused everywhere in sdcpu). The layouts:
- **LoRA** (Hu et al., https://arxiv.org/abs/2106.09685): ΔW = (alpha / rank) · B A.
  diffusers/PEFT name them `<network>.<module>.lora_A.weight` (A, down) and `.lora_B.weight` (B, up),
  alpha in the file's metadata (else alpha = rank); kohya (A1111, ComfyUI) `lora_unet_<module with
  underscores>.lora_down.weight`, `.lora_up.weight` and `.alpha`. LoCon is the same layout on
  convolutions: `down` has the layer's kernel (3x3), `up` is 1x1.
- **LoHa** (LyCORIS; Hyeon-Woo et al., https://arxiv.org/abs/2108.06098): ΔW = (alpha / r) ·
  (w1a w1b) ⊙ (w2a w2b). A Hadamard product of two rank-r matrices has rank at most r²; written out,
  (a_i b_iᵀ) ⊙ (c_j d_jᵀ) = (a_i ⊙ c_j)(b_i ⊙ d_j)ᵀ, so it is exactly a LoRA of rank r1·r2 whose up
  columns are the products a_i ⊙ c_j and down rows b_i ⊙ d_j.
- **LoKr** (LyCORIS; Yeh et al., https://arxiv.org/abs/2309.14859): ΔW = scale · w1 ⊗ w2 (Kronecker),
  each factor whole or a product (w1a w1b, w2a w2b); scale = alpha / r for a factored one, else 1.
  With w1 = U1 V1 and w2 = U2 V2, (U1 V1) ⊗ (U2 V2) = (U1 ⊗ U2)(V1 ⊗ V2): again exactly low rank.

Every update is therefore the same two small matrices, which the graph runs as a branch beside the
layer (branches.py), whatever the layer's weights are stored as.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import parse_json
from sdcpu.format.safetensors import read_safetensors

# network -> the prefixes of its keys: diffusers' first, then kohya's
PREFIXES = {
    "unet": ("unet.", "lora_unet_"),
    "text_encoder": ("text_encoder.", "lora_te_", "lora_te1_"),
    "text_encoder_2": ("text_encoder_2.", "lora_te2_"),
}
LORA_PARTS = {"lora_A.weight": "down", "lora_down.weight": "down", "lora_B.weight": "up", "lora_up.weight": "up"}
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
PART = re.compile(r"^(?P<layer>.+?)\.(?P<part>lora_[AB]\.weight|lora_(?:down|up)\.weight|alpha|(?:hada|lokr)_\w+)$")
# Kinds of adapter sdcpu recognises but does not run, by a key they hold: each refused by name.
UNREAD = {
    "lora_mid.weight": "a LoCon with a Tucker decomposition (lora_mid)",
    "hada_t1": "a LoHa with a Tucker decomposition (hada_t1)",
    "lokr_t2": "a LoKr with a Tucker decomposition (lokr_t2)",
    "dora_scale": "a DoRA (dora_scale)",
    "diff": "a full weight difference (diff)",
}


@dataclass(frozen=True)
class Update:
    """ΔW = scale · up @ down of one layer: `down` (rank, in) or (rank, in, kh, kw), `up` (out, rank)."""

    down: np.ndarray
    up: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file's updates: {network: {layer, as the file names it without its prefix: Update}}, and
    which prefix named it (diffusers' dotted names or kohya's underscored ones)."""

    path: Path
    updates: dict[str, dict[str, Update]]

    @property
    def networks(self) -> set[str]:
        return {network for network, layers in self.updates.items() if layers}


def read_lora(path: Path, check_networks: Callable[[set[str]], None] = lambda networks: None) -> LoraFile:
    """Read `path` into updates; SdcpuError naming the file for a pickle, a damaged file, keys of an
    adapter kind sdcpu does not run, NaN or Inf, and a file that adapts nothing. `check_networks` is
    given the networks the file adapts before any update is built (it refuses a LoRA of another family)."""
    if path.suffix != ".safetensors":
        raise SdcpuError(f"LoRA {path} is not a .safetensors file (pickled LoRAs are not read)")
    tensors, metadata = read_safetensors(path)
    groups: dict[str, dict[str, dict[str, np.ndarray]]] = {network: {} for network in PREFIXES}
    unknown = []
    for key, tensor in tensors.items():
        network, layer, part = _split(key)
        if network is None:
            unknown.append(key)
            continue
        groups[network].setdefault(layer, {})[part] = tensor
    if unknown:
        kinds = sorted({kind for key in unknown for mark, kind in UNREAD.items() if key.endswith("." + mark)})
        what = f"it is {' and '.join(kinds)}, which sdcpu does not run" if kinds else "keys sdcpu does not read"
        raise SdcpuError(f"LoRA {path.name}: {what}: {', '.join(sorted(unknown)[:3])}")
    check_networks({network for network, layers in groups.items() if layers})
    updates: dict[str, dict[str, Update]] = {network: {} for network in PREFIXES} | {
        network: {layer: _update(path, network, layer, parts, metadata) for layer, parts in layers.items()}
        for network, layers in groups.items()
    }
    lora = LoraFile(path, updates)
    if not lora.networks:
        raise SdcpuError(f"LoRA {path.name} adapts neither a UNet nor a text encoder: it holds no LoRA weights")
    return lora


def _split(key: str) -> tuple[str | None, str, str]:
    # (network, layer without the network's prefix, part) of a key; network None for a key not understood.
    match = PART.match(key)
    if match is None:
        return None, "", ""
    for network, prefixes in PREFIXES.items():
        for prefix in prefixes:
            if match["layer"].startswith(prefix):
                return network, match["layer"][len(prefix) :], match["part"]
    return None, "", ""


def _update(path: Path, network: str, layer: str, parts: dict[str, np.ndarray], metadata: dict[str, str]) -> Update:
    for name, tensor in parts.items():
        if not np.isfinite(tensor).all():
            raise SdcpuError(f"LoRA {path.name} holds NaN or Inf in {network} layer {layer} ({name}); get it again")
    kinds = {"lora": set(LORA_PARTS) & set(parts), "loha": set(LOHA_PARTS) & set(parts)}
    kinds["lokr"] = set(LOKR_PARTS) & set(parts)
    found = [kind for kind, keys in kinds.items() if keys]
    try:
        for name, tensor in parts.items():  # every part a non-empty array; alpha one number
            if (tensor.size != 1) if name == "alpha" else (tensor.ndim == 0 or tensor.size == 0):
                raise ValueError(f"{name} is of shape {tuple(tensor.shape)}")
        alpha = float(parts["alpha"].reshape(())) if "alpha" in parts else metadata_alpha(metadata, network)
        if found == ["lora"] and {"down", "up"} <= {LORA_PARTS[k] for k in kinds["lora"]}:
            return _lora(parts, alpha)
        if found == ["loha"]:
            return _loha(parts, alpha)
        if found == ["lokr"]:
            return _lokr(parts, alpha)
    except (KeyError, ValueError, IndexError) as err:  # IndexError: a part of too few dimensions
        raise SdcpuError(f"LoRA {path.name}: {network} layer {layer} is incomplete or misshapen ({err})") from None
    raise SdcpuError(f"LoRA {path.name}: {network} layer {layer} holds {', '.join(sorted(parts))}, no complete update")


def _lora(parts: dict[str, np.ndarray], alpha: float | None) -> Update:
    down = next(parts[k] for k, role in LORA_PARTS.items() if role == "down" and k in parts)
    up = next(parts[k] for k, role in LORA_PARTS.items() if role == "up" and k in parts)
    up = up.reshape(up.shape[0], -1)  # a LoCon's 1x1 convolution, (out, rank, 1, 1)
    if up.shape[1] != down.shape[0]:
        raise ValueError(f"up is {tuple(up.shape)} and down {tuple(down.shape)}")
    rank = down.shape[0]
    return Update(down, up, (alpha if alpha is not None else rank) / rank)


def _loha(parts: dict[str, np.ndarray], alpha: float | None) -> Update:
    w1a, w1b, w2a, w2b = (parts[k] for k in LOHA_PARTS)  # (out, r1), (r1, in...), (out, r2), (r2, in...)
    r1, r2 = w1b.shape[0], w2b.shape[0]
    up = (w1a[:, :, None] * w2a[:, None, :]).reshape(w1a.shape[0], r1 * r2)
    down = (w1b.reshape(r1, 1, -1) * w2b.reshape(1, r2, -1)).reshape(r1 * r2, *w1b.shape[1:])
    return Update(down, up, (alpha if alpha is not None else r1) / r1)


def _lokr(parts: dict[str, np.ndarray], alpha: float | None) -> Update:
    u1, v1, rank1 = _factors(parts, "lokr_w1")
    u2, v2, rank2 = _factors(parts, "lokr_w2")
    up = np.kron(u1, u2)  # (a·c, r1·r2)
    down = np.kron(v1, v2.reshape(v2.shape[0], -1))  # (r1·r2, b·d·kh·kw)
    rank = rank1 or rank2  # LyCORIS scales by alpha / the rank of the factored w1, else of w2
    scale = alpha / rank if alpha is not None and rank else 1.0
    return Update(down, up, scale)


def _factors(parts: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    # w = U V exactly, with the smaller inner size: (U, V, the rank if the file stores w factored).
    if name in parts:
        w = parts[name].reshape(parts[name].shape[0], -1)
        if w.shape[0] <= w.shape[1]:
            return np.eye(w.shape[0], dtype=w.dtype), w, None
        return w, np.eye(w.shape[1], dtype=w.dtype), None
    u, v = parts[f"{name}_a"], parts[f"{name}_b"]
    return u, v.reshape(v.shape[0], -1), int(v.shape[0])


def metadata_alpha(metadata: dict[str, str], network: str) -> float | None:
    """The alpha of `network` in a diffusers file's metadata, which keeps PEFT's adapter config flattened
    ({"unet.lora_alpha": 8, ...}); None where it has none. Per-layer patterns are refused, not half-read."""
    try:
        config = parse_json(metadata.get("lora_adapter_metadata", "{}"), "the LoRA's adapter metadata")
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    if config.get(f"{network}.alpha_pattern") or config.get(f"{network}.rank_pattern"):
        raise SdcpuError("a LoRA with per-layer ranks or alphas (PEFT's rank_pattern, alpha_pattern) is not read yet")
    alpha = config.get(f"{network}.lora_alpha")
    return float(alpha) if isinstance(alpha, (int, float)) else None
