"""A battery of bad inputs and faults for the `sdcpu` command, each run in its own process.

Each case builds what it needs in a scratch folder (from the bundled demo model, or bytes written by
hand), runs the command and expects exit code 2, its message on stderr, no traceback and no output
file. tests/test_bad_inputs.py runs them; bench/reliability.py writes docs/reliability.md from them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sdcpu.bench import bad_files, bad_loras
from sdcpu.bench.battery import (
    EXPORT,
    F32,
    REFINER_FILE,
    SDXL_LORA_FILE,
    Case,
    Setup,
    convert,
    damaged_model,
    generate,
    png_header,
    real_png,
    run,
    safetensors,
    with_file,
)
from sdcpu.models import CONVERTED

__all__ = ["CASES", "Case", "run"]


def _settings() -> list[Case]:
    cases = [
        ("--steps 0", generate("--steps", "0"), "steps must be at least 1"),
        ("--steps 1000", generate("--steps", "1000"), "below the model's 1000 timesteps"),
        ("--steps 1000000", generate("--steps", "1000000"), "below the model's 1000 timesteps"),
        ("--steps -5", generate("--steps", "-5"), "steps must be at least 1"),
        ("--steps abc", generate("--steps", "abc"), "Invalid value"),
        ("--guidance nan", generate("--guidance", "nan"), "guidance must be a finite number"),
        ("--guidance inf", generate("--guidance", "inf"), "guidance must be a finite number"),
        ("--guidance -1", generate("--guidance", "-1"), "guidance must be a finite number"),
        ("--guidance 1000", generate("--guidance", "1000"), "guidance must be a finite number"),
        ("--width 16384 --height 16384", generate("--width", "16384", "--height", "16384"), "need about"),
        ("--num-images 100000", generate("--num-images", "100000"), "need about"),
        ("--num-images 0", generate("--num-images", "0"), "num_images must be from 1 to 100,000"),
        ("--width 63", generate("--width", "63"), "multiples of 4"),
        ("--height -64", generate("--height", "-64"), "multiples of 4"),
        ("--seed -1", generate("--seed", "-1"), "seed must be a non-negative integer"),
        ("--seed 2**64", generate("--seed", str(2**64)), "seed must be a non-negative integer"),
        ("--scheduler nope", generate("--scheduler", "nope"), "unknown scheduler 'nope'"),
        ("--deep-cache 0", generate("--deep-cache", "0"), "deep_cache must be at least 1"),
        ("--token-downsampling 0", generate("--token-downsampling", "0"), "token_downsampling must be at least 1"),
        ("--compute-precision fp64", generate("--compute-precision", "fp64"), "Invalid value"),
        ("--backend tensorrt", generate("--backend", "tensorrt"), "unknown backend 'tensorrt'"),
        ("--backend onnxruntime on an OpenVINO folder", generate("--backend", "onnxruntime"), "cannot read a openvino"),
        ("--device NOPE", generate("--device", "NOPE"), "OpenVINO has no device 'NOPE'"),
        ("--verify sometimes", generate("--verify", "sometimes"), "Invalid value"),
    ]
    return [Case(name, "settings", setup, message) for name, setup, message in cases]


def _prompts() -> list[Case]:
    cases = [
        ("prompt of invalid UTF-8 (\\xff)", generate(prompt="\udcff"), "not valid UTF-8"),
        ("prompt of 20,000 bytes", generate(prompt="a" * 20_000), "over the 16,384-byte limit"),
        ("prompt with a control character", generate(prompt="a\x01cat"), "control characters"),
        ("negative prompt of invalid UTF-8", generate("--negative-prompt", "\udcfe"), "not valid UTF-8"),
    ]
    return [Case(name, "prompts", setup, message) for name, setup, message in cases]


def _init_images() -> list[Case]:
    init = ("generate", "a cat", "--out", "out.png", "--steps", "2", "--init-image", "FILE")
    cases = [
        ("init image missing", lambda s: [a.replace("FILE", "none.png") for a in init], "cannot read the init image"),
        ("init image is text", with_file("x.png", b"not an image", *init), "cannot read the init image"),
        ("init image is empty", with_file("x.png", b"", *init), "cannot read the init image"),
        ("init image truncated", with_file("x.png", png_header(64, 64)[:30], *init), "cannot read the init image"),
        ("init image header 30000x30000", with_file("x.png", png_header(30000, 30000), *init), "megapixel limit"),
        ("init image header 10000x10000", with_file("x.png", png_header(10000, 10000), *init), "megapixel limit"),
        ("init image header 7100x7100", with_file("x.png", png_header(7100, 7100), *init), "megapixel limit"),
        ("init image with --strength 0", real_png(*init, "--strength", "0"), "strength must be in (0, 1]"),
    ]
    return [Case(name, "init images", setup, message) for name, setup, message in cases]


def _outputs() -> list[Case]:
    def existing(read_only: bool, *extra: str) -> Setup:
        def setup(scratch: Path) -> list[str]:
            (scratch / "out.png").write_bytes(b"keep me")
            if read_only:
                (scratch / "out.png").chmod(0o444)
            return generate(*extra)(scratch)

        return setup

    def folder_out(scratch: Path) -> list[str]:
        (scratch / "dir").mkdir()
        return ["generate", "a cat", "--out", "dir", "--steps", "2"]

    cases = [
        ("--out an existing file", existing(False), "exists; pass --overwrite"),
        ("--out x.jpg", lambda s: ["generate", "a cat", "--out", "x.jpg"], "use a .png name"),
        ("--out without a suffix", lambda s: ["generate", "a cat", "--out", "x"], "use a .png name"),
        ("--out an existing folder", folder_out, "is a folder"),
        ("--out in a missing folder", lambda s: ["generate", "a cat", "--out", "no/x.png"], "does not exist"),
    ]
    if os.geteuid() != 0:  # root writes to read-only files and folders anyway
        cases.append(("--out a read-only file, --overwrite", existing(True, "--overwrite"), "is read-only"))
    return [Case(name, "outputs", setup, message) for name, setup, message in cases]


def _flip_byte(folder: Path, manifest: dict) -> None:
    target = folder / "unet" / "openvino_model.bin"
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _no_manifest(folder: Path, manifest: dict) -> None:
    (folder / "sdcpu.json").unlink()
    (folder / "model_index.json").unlink()  # with it, the folder is read as another tool's export
    manifest.clear()


def _no_manifest_nor_unet(folder: Path, manifest: dict) -> None:
    (folder / "sdcpu.json").unlink()
    (folder / "unet" / "openvino_model.xml").unlink()
    manifest.clear()


def _warm_then_flip(*extra: str) -> Setup:
    """A byte flipped after the record of verified hashes was written, with size, mtime and inode kept:
    what the fast check trusts (docs/reliability.md), and what --verify full catches."""

    def setup(scratch: Path) -> list[str]:
        from sdcpu.format.manifest import sha256_file

        args = damaged_model(lambda folder, data: None, *extra)(scratch)
        target = scratch / "model" / "unet" / "openvino_model.bin"
        digest = sha256_file(target)
        _flip_byte(scratch / "model", {})
        stat = target.stat()
        record = {str(target.resolve()): {"stat": [stat.st_size, stat.st_mtime_ns, stat.st_ino], "sha256": digest}}
        (scratch / "cache").mkdir(exist_ok=True)
        (scratch / "cache" / "verified-files.json").write_text(json.dumps(record))
        return args

    return setup


def _link_outside(folder: Path, manifest: dict) -> None:
    target = folder / "unet" / "openvino_model.bin"
    outside = folder.parent / "elsewhere.bin"
    target.replace(outside)
    target.symlink_to(outside)


def _model_folders() -> list[Case]:
    def set_(key: str, value: object) -> Callable[[Path, dict], None]:
        return lambda folder, data: data.__setitem__(key, value)

    def write(text: str) -> Callable[[Path, dict], None]:
        def change(folder: Path, data: dict) -> None:
            (folder / "sdcpu.json").write_text(text)
            data.clear()

        return change

    def add_file(rel: str) -> Callable[[Path, dict], None]:
        return lambda folder, data: data["files"].__setitem__(rel, {"sha256": "0" * 64, "bytes": 1})

    def damage(rel: str, data_bytes: bytes) -> Callable[[Path, dict], None]:
        def change(folder: Path, data: dict) -> None:
            (folder / rel).write_bytes(data_bytes)

        return change

    cases = [
        (
            "--model a missing folder",
            lambda s: ["generate", "a", "--out", "o.png", "--model", "nope"],
            "does not exist",
        ),
        ("--model a folder without a manifest", damaged_model(_no_manifest), "no sdcpu.json"),
        (
            "--model a diffusers folder without graphs",
            damaged_model(_no_manifest_nor_unet),
            "neither an sdcpu model folder (no sdcpu.json) nor an OpenVINO or ONNX export",
        ),
        ("manifest not JSON", damaged_model(write("{not json")), "is damaged"),
        ("manifest a JSON list", damaged_model(write("[1, 2]")), "is damaged"),
        ("manifest files is a list", damaged_model(set_("files", [])), "files is not an object"),
        ("manifest format unknown", damaged_model(set_("format", "tensorrt")), "unknown format 'tensorrt'"),
        ("manifest sample_size a string", damaged_model(set_("sample_size", "64")), "sample_size is not an integer"),
        ("manifest path ../outside", damaged_model(add_file("../outside.bin")), "leaves the model folder"),
        ("manifest absolute path", damaged_model(add_file("/etc/passwd")), "leaves the model folder"),
        ("manifest version 1", damaged_model(set_("sdcpu_manifest", 1)), "convert the checkpoint again"),
        ("manifest version 99", damaged_model(set_("sdcpu_manifest", 99)), "newer sdcpu"),
        ("a weight file missing", damaged_model(lambda f, d: (f / "unet/openvino_model.bin").unlink()), "is missing"),
        ("a weight file truncated", damaged_model(damage("unet/openvino_model.bin", b"\0" * 10)), "wrong size"),
        ("a weight file with a byte flipped", damaged_model(_flip_byte), "does not match its sha256"),
        ("byte flipped, stat kept, hash record warm, --verify full", _warm_then_flip("--verify", "full"), "sha256"),
        ("a weight file linked outside the folder", damaged_model(_link_outside), "points outside the folder"),
        (
            "a model of a family not run yet (SDXL refiner)",
            damaged_model(set_("family", "sdxl-refiner")),
            "are not supported yet",
        ),
    ]
    return [Case(name, "model folders", setup, message) for name, setup, message in cases]


def _safetensors() -> list[Case]:
    cases = [
        ("empty file", b"", "shorter than the 8-byte header length"),
        ("header length 2**64-1", safetensors({}, length=2**64 - 1), "over the 104,857,600-byte limit"),
        ("header longer than the file", safetensors({"a": F32}, length=5000), "runs past the end"),
        ("header not JSON", safetensors(b"{nope", b""), "not JSON"),
        ("header not UTF-8", safetensors(b"\xff\xfe", b""), "not JSON"),
        ("header a JSON list", safetensors([1]), "not a JSON object"),
        ("a duplicate tensor name", safetensors(b'{"a": %s, "a": %s}' % ((json.dumps(F32).encode(),) * 2)), "twice"),
        ("an unknown dtype", safetensors({"a": {**F32, "dtype": "F7"}}, b"\0" * 8), "unknown dtype"),
        ("end before begin", safetensors({"a": {**F32, "data_offsets": [8, 0]}}, b"\0" * 8), "outside"),
        ("offsets past the data", safetensors({"a": {**F32, "data_offsets": [0, 16]}}, b"\0" * 8), "outside"),
        ("bytes not matching shape x dtype", safetensors({"a": {**F32, "shape": [3]}}, b"\0" * 8), "not the [3]"),
        ("overlapping tensors", safetensors({"a": F32, "b": F32}, b"\0" * 8), "overlaps"),
        ("truncated data", safetensors({"a": F32}, b"\0" * 4), "outside"),
        ("trailing bytes", safetensors({"a": F32}, b"\0" * 12), "cover 8 of the 12"),
        ("a negative dimension", safetensors({"a": {**F32, "shape": [-2]}}, b"\0" * 8), "non-negative"),
        ("__metadata__ not strings", safetensors({"__metadata__": {"a": 1}}), "__metadata__"),
    ]
    return [
        Case(f"convert: {name}", "safetensors", convert("bad.safetensors", data), message, EXPORT)
        for name, data, message in cases
    ]


def _converts() -> list[Case]:
    def existing(scratch: Path) -> list[str]:
        (scratch / "existing").mkdir()
        return ["convert", str(CONVERTED.parent / "source"), "existing"]

    source = str(CONVERTED.parent / "source")
    cases = [
        ("convert to an existing OUT", existing, "already exists; pass --force"),
        ("convert --precision int9", lambda s: ["convert", source, "out", "--precision", "int9"], "cannot do"),
        ("convert --preset on a folder", lambda s: ["convert", source, "out", "--preset", "sd1"], "single-file"),
        ("convert a missing source", lambda s: ["convert", "./nope", "out"], "does not exist"),
        ("convert a .txt file", convert("model.txt", b"hello"), "not a checkpoint"),
        ("convert a converted folder", lambda s: ["convert", str(CONVERTED), "out"], "is already converted"),
        (
            "convert an SDXL refiner single file",
            convert("refiner.safetensors", REFINER_FILE),
            "Stable Diffusion XL refiner models are not",
        ),
        ("convert a damaged .ckpt", convert("model.ckpt", b"PK\x03\x04garbage"), "is not a PyTorch checkpoint"),
        (
            "convert --lora missing",
            lambda s: ["convert", source, "out", "--lora", "nope.safetensors"],
            "does not exist",
        ),
        (
            "convert an SD 1.x-architecture model with an SDXL LoRA",
            with_file("xl-lora.safetensors", SDXL_LORA_FILE, "convert", source, "out", "--lora", "FILE"),
            "is a LoRA for Stable Diffusion XL",
        ),
        (
            "convert two scales for one --lora",
            lambda s: ["convert", source, "out", "--lora", "a.safetensors", "--lora-scale", "1", "--lora-scale", "2"],
            "2 --lora-scale values for 1 --lora files",
        ),
        (
            "convert --calibration-resolution 30",
            lambda s: ["convert", source, "out", "--precision", "int8-hybrid", "--calibration-resolution", "30"],
            "must be between 64 and 2048 pixels",
        ),
        (
            "convert --calibration-resolution 101 (not a multiple of the VAE's factor)",
            lambda s: ["convert", source, "out", "--precision", "int8-hybrid", "--calibration-resolution", "101"],
            "the calibration resolution must be a multiple of",
        ),
        (
            "convert --tiny-vae of a file",
            lambda s: ["convert", source, "out", "--tiny-vae", source + "/model_index.json"],
            "is not a diffusers AutoencoderTiny folder",
        ),
    ]
    return [Case(name, "convert", setup, message, EXPORT) for name, setup, message in cases]


def _faults() -> list[Case]:
    def cache_is_a_file(scratch: Path) -> list[str]:
        (scratch / "cache-file").write_text("not a folder")
        return generate()(scratch)

    case = Case("cache folder is a file", "faults", cache_is_a_file, "cannot write to the cache folder")
    return [Case(case.name, case.category, case.setup, case.message, env={"SDCPU_CACHE_DIR": "cache-file"})]


def _previews() -> list[Case]:
    base = ["generate", "a cat", "--out", "out.png", "--steps", "2"]
    no_tiny = damaged_model(_without_tiny_decoder, "--decoder", "tiny")
    return [
        Case(
            "preview to a .jpg",
            "outputs",
            lambda s: [*base, "--preview-every", "1", "--preview-out", "p.jpg"],
            "a .png --preview-out",
        ),
        Case("preview without a file", "outputs", lambda s: [*base, "--preview-every", "1"], "a .png --preview-out"),
        Case("preview to a folder", "outputs", _preview_folder, "--preview-out previews.png is a folder"),
        Case("bench --json to a named pipe", "outputs", _bench_to_a_pipe, "is not a regular file"),
        Case("--decoder tiny without one", "outputs", no_tiny, "no tiny decoder; convert the checkpoint with"),
    ]


def _preview_folder(scratch: Path) -> list[str]:
    (scratch / "previews.png").mkdir()
    base = ["generate", "a cat", "--out", "out.png", "--steps", "2"]
    return [*base, "--preview-every", "1", "--preview-out", "previews.png"]


def _bench_to_a_pipe(scratch: Path) -> list[str]:
    os.mkfifo(scratch / "results.json")  # opened for writing, it would wait for a reader for ever
    return ["bench", "--runs", "1", "--steps", "1", "--json", "results.json"]


def _without_tiny_decoder(folder: Path, manifest: dict) -> None:
    # the demo ships one: a folder converted without --tiny-vae has none
    for component in ("tiny_vae_decoder", "tiny_vae_encoder"):
        manifest["components"].pop(component)
        shutil.rmtree(folder / component)
    manifest["files"] = {rel: info for rel, info in manifest["files"].items() if not rel.startswith("tiny_vae_")}


def _masks() -> list[Case]:
    def images(mask_size: int, fill: int = 255, *extra: str, mask: str = "m.png") -> Setup:
        def setup(scratch: Path) -> list[str]:
            from PIL import Image

            Image.new("RGB", (64, 64), (200, 30, 30)).save(scratch / "x.png")
            Image.new("L", (mask_size, mask_size), fill).save(scratch / "m.png")
            (scratch / "text.png").write_text("not an image")
            return ["inpaint", "a cat", "--image", "x.png", "--mask", mask, "--out", "out.png", "--steps", "2", *extra]

        return setup

    cases = [
        ("mask of another size", images(32), "the mask is 32x32 and the image 64x64"),
        ("mask all black", images(64, 0), "the mask is empty"),
        ("mask missing", images(64, mask="none.png"), "cannot read the mask"),
        ("mask is text", images(64, mask="text.png"), "cannot read the mask"),
        ("mask blur negative", images(64, 255, "--mask-blur", "-1"), "mask blur must be from 0 to 256"),
        ("inpaint with --strength 0", images(64, 255, "--strength", "0"), "strength must be in (0, 1]"),
    ]
    return [Case(name, "masks", setup, message) for name, setup, message in cases]


def _serve() -> list[Case]:
    serve = ("fastapi", "uvicorn")
    cases = [
        ("serve beyond loopback without a key", ["serve", "--host", "0.0.0.0"], "pass --api-key KEY"),
        ("serve with --queue 0", ["serve", "--queue", "0"], "--queue must be at least 1"),
        ("serve a missing model", ["serve", "--model", "nope"], "does not exist"),
    ]
    return [Case(name, "serve", _given(args), message, serve) for name, args, message in cases]


def _given(args: list[str]) -> Setup:
    return lambda scratch: args


CASES = [*_settings(), *_prompts(), *_init_images(), *_outputs(), *_model_folders(), *_safetensors(), *_converts()]
CASES += [*_previews(), *_masks(), *_serve(), *_faults(), *bad_loras.cases(), *bad_files.cases()]
