"""The one reader of each kind of input, in-process: JSON (bounds on size, nesting and non-finite
numbers), images (every decoding failure an error, EXIF orientation, 16-bit scaled), `.npy` depth maps
(declared sizes checked first), PNG metadata (`--from-png`, fuzzed with hostile chunks), write failures
and convert's OUT rule. The same classes run as commands in the battery (sdcpu/bench/bad_files.py)."""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sdcpu import Pipeline
from sdcpu.bench.bad_files import broken_png, exif_rotated_jpeg, png_with_text
from sdcpu.errors import SdcpuError
from sdcpu.export.folders import check_apart, write_failure
from sdcpu.format.json_bounds import JsonError, nesting_depth, parse_json, read_json
from sdcpu.runtime.io import images
from sdcpu.runtime.io.stored import check_settings, generation_request, read_png
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.tasks import TextToImage
from sdcpu.runtime.tasks.depth2img import load_depth_map

pytestmark = pytest.mark.unit


def test_nesting_is_counted_outside_strings_and_bounded():
    assert nesting_depth(b'{"a": [[1], "[[[[", {"b": "]]\\"[["}]}') == 3
    assert parse_json('{"a": "[[[[[[[["}', "x", max_depth=1) == {"a": "[[[[[[[["}
    for deep in ("[" * 101 + "]" * 101, '{"a":' * 5000 + "1" + "}" * 5000, "[" * 100_000):
        with pytest.raises(JsonError, match="levels deep, over the limit of 100"):
            parse_json(deep, "the thing")


def test_size_and_non_finite_numbers_are_refused_where_asked(tmp_path):
    with pytest.raises(JsonError, match="over the 10-byte limit"):
        parse_json('{"a": "0123456789"}', "x", max_bytes=10)
    assert np.isnan(parse_json('{"a": NaN}', "x")["a"])  # configs may hold NaN; request bodies may not
    for text in ('{"a": NaN}', "[Infinity]", "[-Infinity]", "[1e400]", "[-1e999]"):
        with pytest.raises(JsonError, match="the body is not valid JSON"):
            parse_json(text, "the body", strict=True)
    big = tmp_path / "big.json"
    big.write_text(" " * 2048)
    with pytest.raises(JsonError, match="2,048 bytes of JSON, over the 1,024-byte limit"):
        read_json(big, max_bytes=1024)
    with pytest.raises(JsonError, match="cannot read .*missing.json"):
        read_json(tmp_path / "missing.json")


def _sixteen_bit_png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, np.uint16)).save(buffer, format="PNG")  # mode I;16
    return buffer.getvalue()


def test_16_bit_and_float_images_are_scaled_not_clipped():
    for value in (0, 32768, 65535):
        image = images.read_image(_sixteen_bit_png(value))
        assert image.mode == "RGB" and np.asarray(image).max() == round(value / 257)
    floats = Image.fromarray(np.full((4, 4), 0.5, np.float32))  # mode F, read as 0..1
    assert np.asarray(images.read_image(floats))[0, 0, 0] == 128


def test_exif_orientation_is_applied():
    shown = np.asarray(images.read_image(exif_rotated_jpeg()))
    assert shown.shape == (16, 8, 3)  # turned upright
    assert shown[:8].mean() > 200 and shown[8:].mean() < 50  # the white half is now on top


def test_every_decoding_failure_is_an_error_naming_the_image(tmp_path):
    with pytest.raises(SdcpuError, match="cannot read the mask .*broken PNG file"):  # Pillow's SyntaxError
        (tmp_path / "m.png").write_bytes(broken_png())
        images.read_image(tmp_path / "m.png", "mask")
    with pytest.raises(SdcpuError, match="cannot read the init image: it is not a PNG, JPEG, WEBP image"):
        images.read_image(b"GIF89a....", formats=["PNG", "JPEG", "WEBP"])
    with pytest.raises(images.ImageTooLarge, match="is 9000x9000, over the 50-megapixel limit"):
        images.read_image(Image.new("L", (9000, 9000)))


def _npy(path: Path, shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> Path:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data)
    return path


def test_a_depth_maps_declared_size_is_checked_before_anything_is_allocated(tmp_path):
    image = Image.new("RGB", (64, 64))
    with pytest.raises(SdcpuError, match="declares 10,000,000,000 values, over the 50,000,000 limit"):
        load_depth_map(_npy(tmp_path / "a.npy", (100_000, 100_000)), image)
    with pytest.raises(SdcpuError, match="declares more data than it holds"):
        load_depth_map(_npy(tmp_path / "b.npy", (64, 64), data=b"\0" * 100), image)
    with pytest.raises(SdcpuError, match="holds Python objects"):
        load_depth_map(_npy(tmp_path / "c.npy", (2, 2), "|O"), image)
    depth = load_depth_map(_npy(tmp_path / "d.npy", (64, 64), data=np.ones((64, 64), "<f4").tobytes()), image)
    assert depth.shape == (1, 64, 64)


def test_stored_settings_are_type_checked():
    assert check_settings({"steps": 4, "guidance": 7, "other": object()}, "x") == {"steps": 4, "guidance": 7}
    for key, value in [("steps", "4"), ("steps", True), ("seed", 1.5), ("prompt", 5), ("guidance", "7")]:
        with pytest.raises(SdcpuError, match=f"x holds {key} = "):
            check_settings({key: value}, "x")


def test_from_png_reads_its_settings_and_refuses_damaged_ones(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(png_with_text(sdcpu=json.dumps({"prompt": "a", "steps": 3, "loras": [{"name": "x", "scale": 1}]})))
    assert read_png(good)[0] == {"prompt": "a <lora:x:1>", "steps": 3}
    for chunk, message in [
        ("[1]", "a JSON list, not an object"),
        ('{"controls": [{"name": 5}]}', "controls record whose name is not text"),
        ('{"loras": {"name": "x"}}', "loras = {'name': 'x'}, which is not a list of objects"),
        ("[" * 1000, "nests 1000 levels deep"),
    ]:
        (tmp_path / "bad.png").write_bytes(png_with_text(sdcpu=chunk))
        with pytest.raises(SdcpuError, match=message):
            read_png(tmp_path / "bad.png")


@pytest.fixture(scope="module")
def demo():
    return Pipeline.load(None, LoadOptions(compute_precision="f32"))


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KEYS = st.sampled_from(["prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height", "scheduler"])
KEYS = KEYS | st.sampled_from(["num_images", "deep_cache", "loras", "controls", "noise", "watermark"])
SDCPU_CHUNK = st.dictionaries(KEYS, VALUES, max_size=6).map(json.dumps) | st.text(max_size=200)
A1111_KEYS = st.sampled_from(["Steps", "Seed", "CFG scale", "Size", "Sampler", "Schedule type", "Batch size", "x"])
A1111_LINE = st.lists(st.tuples(A1111_KEYS, st.text(max_size=20)), max_size=6).map(
    lambda pairs: ", ".join(f"{key}: {value}" for key, value in pairs)
)
PARAMETERS = st.tuples(st.text(max_size=60), A1111_LINE).map(lambda parts: "\n".join(parts))
CHUNKS = st.fixed_dictionaries({"sdcpu": SDCPU_CHUNK}) | st.fixed_dictionaries({"parameters": PARAMETERS})
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(chunks=CHUNKS)
def test_from_png_with_hostile_chunks_ends_in_settings_or_a_clear_error(demo, tmp_path, chunks):
    # What `generate --from-png` does before the first step: read the PNG, then check the settings.
    path = tmp_path / "fuzz.png"
    path.write_bytes(png_with_text(**chunks))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            request = generation_request(None, {"steps": 1}, read_png(path)[0])
            demo.settings(request.pop("prompt"), TextToImage(), **request)
        except SdcpuError:
            pass  # the clear error the CLI prints; anything else would be a traceback


def test_a_full_disk_while_writing_a_png_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    real = os.fdopen

    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full(fd: int, mode: str = "r") -> io.BytesIO:
        real(fd, mode).close()
        return Full()

    monkeypatch.setattr(images.os, "fdopen", full)
    with pytest.raises(SdcpuError, match=r"cannot write .*out.png: No space left on device; free some space"):
        images.save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", {})
    assert list(tmp_path.iterdir()) == []


def test_convert_keeps_out_apart_from_its_inputs(tmp_path):
    source = tmp_path / "source"
    (source / "unet").mkdir(parents=True)
    for out, word in [(source, "is"), (source / "unet", "is inside"), (tmp_path, "holds")]:
        with pytest.raises(SdcpuError, match=f"OUT .* {word} the source"):
            check_apart(out, {"source": source})
    (tmp_path / "link").symlink_to(source)
    with pytest.raises(SdcpuError, match="is the --tiny-vae"):
        check_apart(tmp_path / "link", {"source": None, "--tiny-vae": source})
    check_apart(tmp_path / "out", {"source": source, "--config": None})  # beside it is fine


def test_a_failed_convert_write_names_the_file_as_it_would_be_in_out(tmp_path):
    work, out = tmp_path / ".out.partial-1", tmp_path / "out"
    err = OSError(errno.ENOSPC, "No space left on device", str(work / "model" / "unet" / "model.onnx"))
    message = str(write_failure(err, out, work))
    assert f"writing {out / 'unet' / 'model.onnx'}: No space left on device; free some space" in message
    assert message.endswith(f"Nothing was written to {out}")
