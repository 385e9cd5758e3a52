"""A1111's LoRA tags in a prompt, `<lora:NAME:WEIGHT>`, and the LoRA folder their names are looked up in.

As A1111 (and stable-diffusion.cpp's `--lora-model-dir`) read them: NAME is a file in the folder without
its `.safetensors`, WEIGHT the scale (default 1); the tags are removed from the prompt before it is
tokenized. A name is a file name, never a path: `<lora:../../etc/passwd:1>` is refused, as is a link out
of the folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from sdcpu.errors import SdcpuError
from sdcpu.format.names import is_plain_name
from sdcpu.runtime.lora.setting import NEEDS_OPENVINO, LoraSetting, check_lora_count

# <lora:NAME[:WEIGHT[:TE_WEIGHT]]>, the third field ignored. Each field is bounded: unbounded, a prompt of
# "<lora:" repeated cost quadratic time (21,000 of them took 58 s).
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)", re.ASCII | re.IGNORECASE)
TAG = re.compile(r"<lora:([^:>]{0,1024})(?::([^:>]{0,64}))?(?::[^>]{0,64})?>", re.IGNORECASE)


def split_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its LoRA tags, and each tag's (name, weight)."""
    tags = []
    for match in TAG.finditer(prompt):
        name, weight = match[1].strip(), (match[2] or "1").strip()
        if not NUMBER.fullmatch(weight):  # float() also reads "1_0" as 10 and other scripts' digits
            raise SdcpuError(f"<lora:{name}:{weight}>: the weight is not a number")
        scale = float(weight)
        if not math.isfinite(scale):
            raise SdcpuError(f"<lora:{name}:{weight}>: the weight must be a finite number")
        tags.append((name, scale))
    cleaned = re.sub(r"\s{2,}", " ", TAG.sub("", prompt)).strip()
    if "<lora:" in cleaned.lower():  # a tag that is not one: said, rather than drawn as words
        at = cleaned.lower().index("<lora:")
        raise SdcpuError(
            f"the prompt holds a LoRA tag sdcpu cannot read: {cleaned[at : at + 40]!r}...; write <lora:NAME:WEIGHT>"
        )
    return cleaned, tags


def find_lora(name: str, folder: Path | None) -> Path:
    """The file of the LoRA `name` in `folder`; SdcpuError for a name that is a path, one not there, and
    no folder."""
    if folder is None:
        raise SdcpuError(f"<lora:{name}> needs a LoRA folder: give --lora-dir DIR")
    if not is_plain_name(name, ".safetensors"):
        raise SdcpuError(
            f"<lora:{name}>: a LoRA is named by its file name in the LoRA folder (at most 255 bytes), not by a path"
        )
    root = folder.resolve()
    path = (root / f"{name}.safetensors").resolve()
    if path.parent != root or not path.is_file():
        available = ", ".join(sorted(p.stem for p in root.glob("*.safetensors"))[:10]) or "none"
        raise SdcpuError(f"no LoRA named {name!r} in {folder} (found: {available})")
    return path


def lora_names(folder: Path | None) -> list[str]:
    """The LoRAs in `folder`, by the names prompts give them (read at every call: nothing to refresh)."""
    return sorted(f.stem for f in folder.glob("*.safetensors") if f.is_file()) if folder is not None else []


def prompt_loras(prompt: str, folder: Path | None) -> tuple[str, list[LoraSetting]]:
    """The prompt without its tags, and the LoRAs they name, found in `folder` and checked."""
    cleaned, tags = split_tags(prompt)
    return cleaned, [LoraSetting.of(find_lora(name, folder), scale) for name, scale in tags]


def changed_loras(prompt: str, recorded: dict[str, str], folder: Path | None) -> list[str]:
    """A note for each LoRA of the prompt's tags that `folder` holds in another version than the one an
    image was made with (`recorded`: name -> A1111's short hash): its image will differ. A LoRA not found
    is left to the generation, which says so."""
    notes = []
    for name, _ in split_tags(prompt)[1]:
        if name not in recorded:
            continue
        try:
            found = LoraSetting.of(find_lora(name, folder))
        except SdcpuError:
            continue
        if found.hash != recorded[name]:
            notes.append(
                f"LoRA {name} in {folder} is not the file the image was made with (hash {found.hash}, the image "
                f"records {recorded[name]}): this image will differ"
            )
    return notes


def given_loras(
    loras: Sequence[LoraSetting | tuple[str | Path, float]], backend: str | None, folder: Path | None
) -> tuple[LoraSetting, ...]:
    """A generation's LoRAs as settings: each (path, scale) a file, or a bare name (no file of that name,
    no .safetensors) of a LoRA in `folder`; SdcpuError on a backend other than OpenVINO, or for too many."""
    checked = tuple(lora if isinstance(lora, LoraSetting) else _given(*lora, folder) for lora in loras)
    if checked and backend != "openvino":
        raise SdcpuError(NEEDS_OPENVINO)
    return check_lora_count(checked)


def _given(path: str | Path, scale: float, folder: Path | None) -> LoraSetting:
    path = Path(path)
    if not path.exists() and path.suffix != ".safetensors" and folder is not None:
        path = find_lora(str(path), folder)
    return LoraSetting.of(path, scale)
