"""The manifest's schema: every field's type, the formats this sdcpu reads, and file paths that stay
inside the model folder. Checked before a manifest is used, so a hand-edited or damaged `sdcpu.json`
is refused with the field it got wrong, never read past."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

FORMATS = ("openvino", "onnx")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# What the UNet was trained for, named as the Hugging Face hub's pipeline tags name them, and how many input
# channels it takes beyond the latents: inpainting's mask and masked-image latents, the upscaler's low-res
# image, depth2img's depth map.
TASKS = {"text-to-image": 0, "inpainting": 5, "upscaling": 3, "depth-to-image": 1}
FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "family": str,
    "prediction_type": str,
    "format": str,
    "precision": str,
    "sample_size": int,
    "vae_scale_factor": int,
    "vae_scaling_factor": (int, float),
    "latent_channels": int,
    "components": dict,
    "files": dict,
    "versions": dict,
    "extra": dict,
    "task": str,
}
TYPE_NAMES: dict[type | tuple[type, ...], str] = {str: "a string", int: "an integer", dict: "an object"}
SHA256 = re.compile(r"[0-9a-f]{64}")


class SchemaError(ValueError):
    """What is wrong with a manifest, in words."""


def check_fields(data: dict[str, Any]) -> None:
    """Raise SchemaError unless `data` (the manifest without its version) matches the schema."""
    unknown = sorted(set(data) - set(FIELDS))
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise SchemaError(f"fields {', '.join(missing)} are missing")
    if unknown:
        raise SchemaError(f"fields {', '.join(unknown)} are unknown")
    for name, kind in FIELDS.items():
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise SchemaError(f"{name} is not {TYPE_NAMES.get(kind, 'a number')}")
    if data["format"] not in FORMATS:
        raise SchemaError(f"unknown format {data['format']!r}; this sdcpu reads {' and '.join(FORMATS)}")
    if data["task"] not in TASKS:
        raise SchemaError(f"unknown task {data['task']!r}; this sdcpu runs {', '.join(TASKS)}")
    if data["prediction_type"] not in PREDICTION_TYPES:
        raise SchemaError(f"unknown prediction_type {data['prediction_type']!r}")
    for name in ("sample_size", "vae_scale_factor", "latent_channels", "vae_scaling_factor"):
        if not 0 < data[name] < 2**20:
            raise SchemaError(f"{name} {data[name]} is out of range")
    for rel, info in data["files"].items():
        check_file_entry(rel, info)
    for component, info in data["components"].items():
        check_component(component, info, data["files"])


def check_file_entry(rel: Any, info: Any) -> None:
    if not is_inside(rel):
        raise SchemaError(f"the file path {rel!r} leaves the model folder; only relative paths inside it are allowed")
    if not isinstance(info, dict) or set(info) != {"sha256", "bytes"}:
        raise SchemaError(f"the entry of {rel} is not {{sha256, bytes}}")
    if not isinstance(info["sha256"], str) or not SHA256.fullmatch(info["sha256"]):
        raise SchemaError(f"the sha256 of {rel} is not 64 hexadecimal digits")
    if type(info["bytes"]) is not int or info["bytes"] < 0:
        raise SchemaError(f"the size of {rel} is not a non-negative integer")


def check_component(component: str, info: Any, files: dict[str, Any]) -> None:
    if not isinstance(info, dict) or not isinstance(info.get("precision"), str):
        raise SchemaError(f"component {component!r} has no precision")
    listed = info.get("files")
    if not isinstance(listed, list) or not all(isinstance(f, str) and f in files for f in listed):
        raise SchemaError(f"component {component!r} lists files the manifest does not describe")
    inputs = info.get("inputs")
    if not isinstance(inputs, dict) or not all(_is_input(spec) for spec in inputs.values()):
        raise SchemaError(f"the inputs of component {component!r} are not {{name: {{dtype, shape}}}}")
    inner = info.get("inner_outputs", [])
    if not isinstance(inner, list) or not all(isinstance(name, str) for name in inner):
        raise SchemaError(f"the inner_outputs of component {component!r} are not a list of names")


def _is_input(spec: Any) -> bool:
    shape = spec.get("shape") if isinstance(spec, dict) else None
    return (
        isinstance(spec, dict)
        and isinstance(spec.get("dtype"), str)
        and isinstance(shape, list)
        and len(shape) <= 8
        and all(type(size) is int and size >= -1 for size in shape)
    )


def is_inside(rel: Any) -> bool:
    """Whether `rel` is a relative POSIX path that stays inside its folder (no `..`, no root, no drive)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or ":" in rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and "." not in rel.split("/")
