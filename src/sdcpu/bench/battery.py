"""The bad-input battery's kit (bad_inputs.py holds the cases): what a case is, how it runs in its own
process, and the inputs it builds in a scratch folder."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sdcpu.models import CONVERTED

Setup = Callable[[Path], list[str]]  # scratch folder -> the command's arguments


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    setup: Setup
    message: str  # a piece of the expected error message
    needs: tuple[str, ...] = ()  # modules the case needs (the export or serve extra), else skipped
    env: dict[str, str] = field(default_factory=dict)
    file_limit: int | None = None  # bytes: the largest file the command may write (RLIMIT_FSIZE), a full disk


def run(case: Case, scratch: Path) -> subprocess.CompletedProcess:
    """Run `case` in `scratch`: `python -m sdcpu ARGS`, with a private compile cache."""
    args = case.setup(scratch)
    env = {**os.environ, "SDCPU_CACHE_DIR": str(scratch / "cache"), "NO_COLOR": "1", **case.env}
    command = [sys.executable, "-m", "sdcpu", *args]
    limit = case.file_limit

    def limited() -> None:  # writes past the limit fail with EFBIG ("File too large"); Python ignores SIGXFSZ
        import resource  # POSIX only, as this fault is

        assert limit is not None
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    preexec = limited if limit is not None else None
    return subprocess.run(command, cwd=scratch, env=env, capture_output=True, timeout=300, preexec_fn=preexec)


def generate(*extra: str, prompt: str = "a red circle") -> Setup:
    return lambda scratch: ["generate", prompt, "--out", "out.png", "--steps", "2", *extra]


def with_file(name: str, data: bytes, *args: str) -> Setup:
    def setup(scratch: Path) -> list[str]:
        (scratch / name).write_bytes(data)
        return [a.replace("FILE", name) for a in args]

    return setup


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with no pixel data: tiny on disk, huge decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def real_png(*args: str) -> Setup:
    def setup(scratch: Path) -> list[str]:
        from PIL import Image

        Image.new("RGB", (64, 64), (200, 30, 30)).save(scratch / "x.png")
        return [a.replace("FILE", "x.png") for a in args]

    return setup


def damaged_model(change: Callable[[Path, dict], None], *extra: str) -> Setup:
    """A copy of the demo model, its manifest passed through `change(folder, manifest)` and written back."""

    def setup(scratch: Path) -> list[str]:
        folder = scratch / "model"
        shutil.copytree(CONVERTED, folder)
        data = json.loads((folder / "sdcpu.json").read_text())
        change(folder, data)
        if data:
            (folder / "sdcpu.json").write_text(json.dumps(data))
        return ["generate", "a cat", "--model", "model", "--out", "out.png", "--steps", "2", *extra]

    return setup


def safetensors(header: object, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def convert(name: str, data: bytes, *extra: str) -> Setup:
    return with_file(name, data, "convert", "FILE", "out", *extra)


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
EXPORT = ("torch", "diffusers")
# A single file in the SDXL refiner's layout (its one text encoder, OpenCLIP's, under conditioner.embedders.0),
# of two tiny tensors.
REFINER_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.model.ln_final.weight")
REFINER_FILE = safetensors(
    {key: {**F32, "data_offsets": [8 * i, 8 * i + 8]} for i, key in enumerate(REFINER_KEYS)}, b"\0" * 16
)
# An SDXL LoRA in kohya's layout (its second text encoder's keys), of two tiny tensors.
SDXL_LORA_KEYS = tuple(f"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_{part}.weight" for part in ("down", "up"))
SDXL_LORA_FILE = safetensors(
    {key: {**F32, "data_offsets": [8 * i, 8 * i + 8]} for i, key in enumerate(SDXL_LORA_KEYS)}, b"\0" * 16
)
