"""The checks a convert makes before it imports torch: the request (format, precision, OUT), OUT apart
from every input, the source's kind, its JSON files and safetensors headers, and the LoRA files. A typo
or a damaged file is answered in a fraction of a second, not after the seconds torch and diffusers take
to import (and, for a damaged file, not after the networks before it were exported).

This module imports neither torch nor the export families; `sdcpu convert` runs it first, and `convert`
runs it again (it reads headers only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdcpu.errors import SdcpuError
from sdcpu.export.folders import check_apart
from sdcpu.export.lora import Lora, check_loras
from sdcpu.export.quantize import PRECISIONS
from sdcpu.format.json_bounds import read_json
from sdcpu.format.manifest import MANIFEST_NAME
from sdcpu.format.safetensors import check_safetensors

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
CONVERTED_GRAPHS = ("openvino_model.xml", "model.onnx")


def preflight(
    source: str,
    out: Path,
    fmt: str,
    precision: str,
    *,
    force: bool = False,
    inputs: dict[str, Path] | None = None,
    loras: Sequence[Lora] = (),
) -> None:
    """Refuse a convert that cannot succeed, before any work. `inputs`: the other paths given
    (--config, --tokenizer, --tiny-vae), by their option names."""
    check_target(fmt, precision, out, force)
    inputs = inputs or {}
    paths = {"source": Path(source).expanduser(), **inputs}
    check_apart(out, paths | {f"--lora {lora.path.name}": lora.path for lora in loras})
    check_loras(list(loras))
    check_source(source)
    for folder in inputs.values():
        if folder.is_dir():
            check_json_files(folder)


def check_target(fmt: str, precision: str, out: Path, force: bool) -> None:
    """The format, the precision and OUT."""
    if fmt not in PRECISIONS:
        raise SdcpuError(f"unknown format {fmt!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision not in PRECISIONS[fmt]:
        others = [f for f in PRECISIONS if precision in PRECISIONS[f]]
        elsewhere = f" ({precision} needs --format {others[0]})" if others else ""
        raise SdcpuError(
            f"{fmt} export cannot do precision {precision!r}; available: {', '.join(PRECISIONS[fmt])}{elsewhere}"
        )
    if out.exists() and not force:
        raise SdcpuError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise SdcpuError(f"the folder {out.parent} for the output does not exist")


def check_source(source: str) -> None:
    """A single file of a checkpoint's kind (a .safetensors one with a sound header), a diffusers folder
    not yet converted, with sound JSON files and safetensors headers, or what may be a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise SdcpuError(f"{path} is not a checkpoint: expected one of {', '.join(SINGLE_FILE_SUFFIXES)}")
        if path.suffix.lower() == ".safetensors":
            check_safetensors(path)
        return
    looks_local = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~"))
    if not path.is_dir() and (looks_local or source.count("/") != 1):
        raise SdcpuError(f"{source} does not exist (expected a diffusers folder, a checkpoint file or a hub id)")
    if path.is_dir():
        check_diffusers_folder(path)


def check_diffusers_folder(folder: Path) -> None:
    """Not a converted folder; every JSON file and safetensors header sound."""
    if (folder / MANIFEST_NAME).exists() or any((folder / "unet" / name).exists() for name in CONVERTED_GRAPHS):
        raise SdcpuError(
            f"{folder} is already converted (it holds OpenVINO or ONNX graphs, not PyTorch weights); "
            f"generate with it: sdcpu generate PROMPT --model {folder} --out image.png"
        )
    check_json_files(folder)
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors")):
        check_safetensors(weights)


def check_json_files(folder: Path) -> None:
    """Read every JSON file of `folder` and of its component folders through the JSON bounds before
    diffusers or transformers read them: they parse without a nesting limit (RecursionError) and read a
    file of any size whole."""
    for path in sorted(folder.glob("*.json")) + sorted(folder.glob("*/*.json")):
        read_json(path)
