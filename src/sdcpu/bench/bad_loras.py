"""The bad-input battery's run-time LoRA cases (`generate --lora`, `--lora-dir`, A1111's prompt tags),
on the bundled demo model: each expects exit code 2, its message and no output file."""

from __future__ import annotations

import numpy as np

from sdcpu.bench.battery import F32, SDXL_LORA_FILE, Case, Setup, generate, safetensors, with_file

# A layer the demo's UNet has: its first cross-attention block's self-attention query, 64 wide.
LAYER = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"


def lora_of(parts: dict[str, tuple[tuple[int, ...], float]]) -> bytes:
    """A kohya LoRA of one layer of the demo's UNet: {part ("lora_down.weight", "alpha"...): (shape, fill)}."""
    header, data, offset = {}, b"", 0
    for part, (shape, fill) in parts.items():
        raw = np.full(shape, fill, np.float32).tobytes()
        header[f"{LAYER}.{part}"] = {**F32, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    return safetensors(header, data)


def lora_file(down: tuple[int, int], up: tuple[int, int], fill: float = 0.01) -> bytes:
    """A kohya LoRA of one layer of the demo's UNet, its tensors of these shapes, filled with `fill`."""
    return lora_of({"lora_down.weight": (down, fill), "lora_up.weight": (up, fill)})


def _with_lora(data: bytes, spec: str = "FILE", name: str = "x.safetensors") -> Setup:
    # `generate --lora SPEC` on the demo model, FILE in SPEC being `data` written as `name`
    return with_file(name, data, "generate", "a red circle", "--out", "out.png", "--steps", "2", "--lora", spec)


def cases() -> list[Case]:
    good = lora_file((4, 64), (64, 4))
    tagged = ("--lora-dir", ".")
    listed = [
        ("--lora a missing file", generate("--lora", "nope.safetensors"), "does not exist"),
        ("--lora a pickle (.ckpt)", _with_lora(b"PK\x03\x04", name="x.ckpt"), "pickled LoRAs are not read"),
        ("--lora truncated", _with_lora(good[:-40]), "is not a valid safetensors file"),
        ("--lora an SDXL LoRA", _with_lora(SDXL_LORA_FILE), "is a LoRA for Stable Diffusion XL"),
        ("--lora of another shape", _with_lora(lora_file((4, 48), (64, 4))), "does not fit this model"),
        ("--lora of NaN weights", _with_lora(lora_file((4, 64), (64, 4), np.nan)), "holds NaN or Inf"),
        ("--lora FILE:nan", _with_lora(good, "FILE:nan"), "must be a finite number"),
        ("prompt <lora:../../etc/passwd:1>", generate(*tagged, prompt="a <lora:../../etc/passwd:1>"), "not by a path"),
        ("prompt <lora:missing:1>", generate(*tagged, prompt="a <lora:missing:1>"), "no LoRA named 'missing'"),
        ("--lora-dir a missing folder", generate("--lora-dir", "nope"), "does not exist or is not a folder"),
        ("--lora-rank -1", generate("--lora-rank", "-1"), "lora_rank must be from 0"),
    ]
    return [Case(name, "run-time LoRAs", setup, message) for name, setup, message in listed]
