"""The bad-input battery's second round: files sdcpu reads that were built to break a reader, and faults
of the disk. Each class at least twice:

- images that fail to decode in ways beyond OSError (Pillow's SyntaxError for a broken chunk);
- PNG metadata for `--from-png`: not JSON, not an object, fields of the wrong type, deep nesting, and
  A1111 text that took a quadratic parser minutes;
- JSON files nested 100,000 deep: a manifest, a scheduler config, another tool's folder's config, a
  convert source's and a tiny decoder's config;
- LoRA tensors with the right names and the wrong shapes, at convert and at run time;
- OUT equal to, inside, or holding the convert's source;
- a full disk (here a file-size limit: the write fails the same way, with EFBIG for ENOSPC).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sdcpu.bench.bad_loras import lora_of
from sdcpu.bench.battery import EXPORT, Case, Setup, damaged_model, generate, real_png, with_file
from sdcpu.models import CONVERTED

SOURCE = CONVERTED.parent / "source"  # the demo model's diffusers folder
SCHEDULER, TOKENIZER = "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json"
ENCODER = "text_encoder/config.json"  # read by transformers, which parses without a nesting limit
DEEP = "[" * 100_000 + "]" * 100_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_png() -> bytes:
    """A 64x64 PNG whose image data is split in two chunks, the second's type broken: Pillow raises
    SyntaxError ("broken PNG file") while decoding, not OSError."""
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    raw = buffer.getvalue()
    at = raw.index(b"IDAT") - 4
    length = struct.unpack(">I", raw[at : at + 4])[0]
    data = raw[at + 8 : at + 8 + length]
    return (
        raw[:at]
        + _chunk(b"IDAT", data[: length // 2])
        + _chunk(b"ID\0T", data[length // 2 :])
        + raw[at + 12 + length :]
    )


def exif_rotated_jpeg() -> bytes:
    """A 16x8 JPEG whose left half is white, stored with EXIF orientation 6: shown turned 90 degrees
    clockwise, 8x16 with the white half on top."""
    from PIL import Image

    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), quality=100)
    return buffer.getvalue()


def png_with_text(**chunks: str) -> bytes:
    """A small PNG holding these text chunks (sdcpu's `sdcpu` JSON, A1111's `parameters`)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _images() -> list[Case]:
    init = ("generate", "a cat", "--out", "out.png", "--steps", "2", "--init-image", "FILE")

    def inpaint(scratch: Path) -> list[str]:
        from PIL import Image

        Image.new("RGB", (64, 64)).save(scratch / "x.png")
        (scratch / "m.png").write_bytes(broken_png())
        return ["inpaint", "a cat", "--image", "x.png", "--mask", "m.png", "--out", "out.png", "--steps", "2"]

    control = ("generate", "a cat", "--out", "out.png", "--steps", "2", "--control", "edges:FILE")
    cases = [
        (
            "init image with a broken chunk (SyntaxError)",
            with_file("x.png", broken_png(), *init),
            "cannot read the init",
        ),
        ("mask with a broken chunk (SyntaxError)", inpaint, "cannot read the mask"),
        ("control image with a broken chunk", with_file("x.png", broken_png(), *control), "cannot read the control"),
        (
            "--control-module depth without --depth-estimator",
            real_png(*control, "--control-module", "depth"),
            "the depth module needs a depth estimator",
        ),
        (
            "--depth-estimator of a folder that holds none",
            real_png(*control, "--control-module", "depth", "--depth-estimator", "."),
            "holds no converted depth estimator",
        ),
        (
            "--from-png with a broken chunk",
            with_file("x.png", broken_png(), "generate", "--from-png", "FILE", "--out", "out.png"),
            "cannot read",
        ),
    ]
    return [Case(name, "images", setup, message) for name, setup, message in cases]


def _from_png(**chunks: str) -> Setup:
    return with_file("in.png", png_with_text(**chunks), "generate", "--from-png", "FILE", "--out", "out.png")


def _metadata() -> list[Case]:
    lora = json.dumps({"prompt": "a", "loras": [{"name": "x", "scale": "big"}]})
    cases = [
        ("--from-png: sdcpu chunk not JSON", _from_png(sdcpu="{steps: 2"), "is not valid JSON"),
        ("--from-png: sdcpu chunk a JSON list", _from_png(sdcpu="[1, 2]"), "a JSON list, not an object"),
        ("--from-png: steps as text", _from_png(sdcpu='{"prompt": "a", "steps": "20"}'), "not a whole number"),
        ("--from-png: prompt as a number", _from_png(sdcpu='{"prompt": 5}'), "prompt = 5, which is not text"),
        ("--from-png: seed true", _from_png(sdcpu='{"prompt": "a", "seed": true}'), "seed = True"),
        ("--from-png: a LoRA's scale as text", _from_png(sdcpu=lora), "scale is not a number"),
        ("--from-png: sdcpu chunk nested 100,000 deep", _from_png(sdcpu=DEEP), "nests 100000 levels deep"),
        ("--from-png: sdcpu chunk with NaN", _from_png(sdcpu='{"prompt": "a", "guidance": NaN}'), "NaN is not"),
        # A1111's parser is quadratic in a long line of spaces: 300 KB took hours before its bounds.
        ("--from-png: parameters of 300 KB of spaces", _from_png(parameters="a" + " " * 300_000 + "b"), "16,384-byte"),
        ("--from-png: parameters Steps: 1e999", _from_png(parameters="a\nSteps: 1e999, Seed: 1, Size: 8x8"), "1e999"),
    ]
    return [Case(name, "png metadata", setup, message) for name, setup, message in cases]


def _deep_manifest(folder: Path, manifest: dict) -> None:
    (folder / "sdcpu.json").write_text(DEEP)
    manifest.clear()  # written as it is


def _foreign_deep(path: str) -> Callable[[Path, dict], None]:
    def change(folder: Path, manifest: dict) -> None:
        (folder / "sdcpu.json").unlink()  # with model_index.json kept, read as another tool's export
        (folder / path).write_text(DEEP)
        manifest.clear()

    return change


def _source_with(path: str, text: str, *extra: str) -> Setup:
    """`convert` of a copy of the demo's diffusers folder with `path` replaced by `text`."""

    def setup(scratch: Path) -> list[str]:
        shutil.copytree(SOURCE, scratch / "source")
        (scratch / "source" / path).write_text(text)
        return ["convert", "source", "out", *extra]

    return setup


def _tiny_vae_deep(scratch: Path) -> list[str]:
    (scratch / "taesd").mkdir()
    (scratch / "taesd" / "config.json").write_text(DEEP)
    (scratch / "taesd" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return ["convert", str(SOURCE), "out", "--tiny-vae", "taesd"]


def _nested_json() -> list[Case]:
    cases = [
        ("manifest nested 100,000 deep", damaged_model(_deep_manifest), "nests 100000 levels deep", ()),
        ("another tool's UNet config nested", damaged_model(_foreign_deep("unet/config.json")), "levels deep", ()),
        ("another tool's scheduler config nested", damaged_model(_foreign_deep(SCHEDULER)), "levels deep", ()),
        ("another tool's tokenizer config nested", damaged_model(_foreign_deep(TOKENIZER)), "levels deep", ()),
        ("convert: the text encoder's config nested", _source_with(ENCODER, DEEP), "levels deep", EXPORT),
        ("convert --tiny-vae: config nested", _tiny_vae_deep, "nests 100000 levels deep", EXPORT),
    ]
    return [Case(name, "nested JSON", setup, message, needs) for name, setup, message, needs in cases]


UP_1D = lora_of({"lora_down.weight": ((4, 64), 0.01), "lora_up.weight": ((64,), 0.01)})
RANK_0 = lora_of({"lora_down.weight": ((0, 64), 0.01), "lora_up.weight": ((64, 0), 0.01)})
ALPHA_3 = lora_of({"lora_down.weight": ((4, 64), 0.01), "lora_up.weight": ((64, 4), 0.01), "alpha": ((3,), 1.0)})
NAN_LORA = lora_of({"lora_down.weight": ((4, 64), np.nan), "lora_up.weight": ((64, 4), 0.01)})


def _loras() -> list[Case]:
    def fuse(data: bytes) -> Setup:
        return with_file("l.safetensors", data, "convert", str(SOURCE), "out", "--lora", "FILE")

    def run(data: bytes) -> Setup:
        return with_file(
            "l.safetensors", data, "generate", "a cat", "--out", "out.png", "--steps", "2", "--lora", "FILE"
        )

    cases = [
        ("convert --lora: an up of one dimension", fuse(UP_1D), "which are not a low-rank pair", EXPORT),
        ("convert --lora: NaN weights", fuse(NAN_LORA), "the LoRA is damaged", EXPORT),
        ("--lora: rank 0", run(RANK_0), "lora_down.weight is of shape (0, 64)", ()),
        ("--lora: an alpha of 3 values", run(ALPHA_3), "alpha is of shape (3,)", ()),
    ]
    return [Case(name, "LoRA shapes", setup, message, needs) for name, setup, message, needs in cases]


def _source_copy(out: str) -> Setup:
    def setup(scratch: Path) -> list[str]:
        shutil.copytree(SOURCE, scratch / "source")
        return ["convert", "source", out, "--force"]

    return setup


def _outs() -> list[Case]:
    cases = [
        ("convert SRC SRC --force", _source_copy("source"), "is the source"),
        ("convert SRC . --force (OUT holds SRC)", _source_copy("."), "holds the source"),
    ]
    return [Case(name, "convert OUT", setup, message, EXPORT) for name, setup, message in cases]


def _full_disk() -> list[Case]:
    no_cache = generate("--no-cache")
    preview = generate("--no-cache", "--preview-every", "1", "--preview-out", "p.png")
    convert_to = ("convert", str(SOURCE), "out")
    cases = [
        ("generate onto a full disk", no_cache, "cannot write out.png: File too large", (), 2_000),
        ("preview onto a full disk", preview, "cannot write p.png: File too large", (), 100),
        ("compile cache on a full disk", generate(), "cannot write to the cache folder", (), 2_000),
        ("convert onto a full disk (OpenVINO)", lambda s: list(convert_to), "free some space", EXPORT, 200_000),
    ]
    return [
        Case(name, "full disk", setup, message, needs, file_limit=limit) for name, setup, message, needs, limit in cases
    ]


def _long_names() -> list[Case]:
    long = "n" * 300  # over the 255-byte file name of common filesystems: ENAMETOOLONG, not "not found"
    cases = [
        (
            "--out a name of 300 bytes",
            lambda s: ["generate", "a cat", "--out", f"{long}.png"],
            "File name too long",
            (),
        ),
        ("--model a name of 300 bytes", generate("--model", long), "File name too long", ()),
        ("--lora a name of 300 bytes", generate("--lora", f"{long}.safetensors"), "File name too long", ()),
        ("prompt <lora:300 bytes:1>", generate("--lora-dir", ".", prompt=f"a <lora:{long}:1>"), "not by a path", ()),
    ]
    return [Case(name, "long names", setup, message, needs) for name, setup, message, needs in cases]


def _fifo(*args: str) -> Setup:
    def setup(scratch: Path) -> list[str]:
        os.mkfifo(scratch / "f.png")  # nothing ever writes to it: opening it would wait forever
        return list(args)

    return setup


def _foreign_scheduler(config: dict) -> Callable[[Path, dict], None]:
    def change(folder: Path, manifest: dict) -> None:
        (folder / "sdcpu.json").unlink()  # read as another tool's export: no hash to catch the edit
        path = folder / SCHEDULER
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
        manifest.clear()

    return change


def _bad_key(scratch: Path) -> list[str]:
    return ["serve", "--api-key", "k\udcff"]  # bytes that are not UTF-8, as a shell passes them


def _found_myself() -> list[Case]:
    """Classes found by trying: quadratic patterns, counts and sizes that hung, LoRA tags that added up,
    files that are not files, and values that reached a library unchecked."""
    tags = "<lora:" * 3000  # 18 KB: the tag pattern was quadratic in it
    night = " <lora:night:60>" * 2  # two tags of one LoRA add up, beyond +-100
    cases = [
        ("prompt of 3,000 '<lora:'", generate(prompt=tags), "a LoRA tag sdcpu cannot read", {}),
        (
            "--from-png: a prompt of 40,000 '<lora:'",
            _from_png(sdcpu=json.dumps({"prompt": tags * 13})),
            "cannot read",
            {},
        ),
        ("prompt with <lora:night:60> twice", generate(prompt="a" + night), "its scales add up to 120", {}),
        ("prompt with 17 LoRA tags", generate(prompt="a" + " <lora:night:0.1>" * 17), "17 LoRAs in one image", {}),
        ("--num-images 999999999999", generate("--num-images", "999999999999"), "from 1 to 100,000", {}),
        ("--width and --height 4000000000", generate("--width", "4000000000", "--height", "8"), "at most 16,384", {}),
        ("--from-png: num_images 10**12", _from_png(sdcpu='{"prompt": "a", "num_images": 1e12}'), "whole number", {}),
        ("SDCPU_CACHE_MAX_GB=inf", generate(), "must be a finite number of gigabytes", {"SDCPU_CACHE_MAX_GB": "inf"}),
        ("SDCPU_CACHE_MAX_GB=1e400", generate(), "must be a finite number", {"SDCPU_CACHE_MAX_GB": "1e400"}),
        ("--init-image a FIFO", _fifo(*generate("--init-image", "f.png")(Path("."))), "is not a regular file", {}),
        ("--from-png a FIFO", _fifo("generate", "--from-png", "f.png", "--out", "o.png"), "not a regular file", {}),
        ("scheduler beta_schedule bogus", damaged_model(_foreign_scheduler({"beta_schedule": "x"})), "beta_sched", {}),
        ("scheduler of 10^9 steps", damaged_model(_foreign_scheduler({"num_train_timesteps": 10**9})), "0 to 100", {}),
        ("--width 0 (not the default)", generate("--width", "0"), "positive multiples of", {}),
        ("prompt <lora:night:1_0> (not 10)", generate(prompt="a <lora:night:1_0>"), "the weight is not a number", {}),
        ("eval --count 0", lambda s: ["eval", "--count", "0"], "greater than or equal to 1", {}),
        ("serve --port 99999", lambda s: ["serve", "--port", "99999"], "less than or equal to 65535", {}),
    ]
    serve_extra = ("fastapi", "uvicorn")
    key = Case("serve --api-key of invalid UTF-8", "found by trying", _bad_key, "not valid UTF-8", serve_extra)
    return [Case(name, "found by trying", setup, message, env=env) for name, setup, message, env in cases] + [key]


def cases() -> list[Case]:
    return [
        *_images(),
        *_metadata(),
        *_nested_json(),
        *_loras(),
        *_outs(),
        *_full_disk(),
        *_long_names(),
        *_found_myself(),
    ]
