"""Safetensors files: their header checked before anything reads the file, and a torch-free reader.

The format (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length
N, N bytes of JSON, then the tensors' bytes. The JSON maps each tensor name to its dtype, shape and
[begin, end) offsets in the data, plus an optional "__metadata__" map of strings. The safetensors
library refuses a malformed file with a terse exception, and a JSON parser keeps the last of two
entries with the same name; here every defect gets a message that names the file and the problem, and
a duplicate name is refused (two tensors claiming one name make the checkpoint ambiguous).

`read_safetensors` maps a checked file and returns its tensors as float32 numpy arrays: the runtime
reads LoRA files so, without torch or the safetensors library.
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.errors import SdcpuError

MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2}
DTYPE_BYTES |= {"U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


class HeaderError(ValueError):
    """What is wrong with a header, in words."""


def check_safetensors(path: Path) -> list[str]:
    """Raise SdcpuError naming `path` and its defect unless its header is well formed and every tensor's
    bytes lie inside the file, exactly once; returns the tensors' names."""
    return list(_checked_header(path)[0])


def _checked_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    # The checked tensor entries, the metadata, and where the tensors' data starts.
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if length < 0:
                raise HeaderError(f"it is {size} bytes, shorter than the 8-byte header length")
            if length > MAX_HEADER_BYTES:
                raise HeaderError(f"it declares a {length:,}-byte header, over the {MAX_HEADER_BYTES:,}-byte limit")
            if 8 + length > size:
                raise HeaderError(f"its {length:,}-byte header runs past the end of the {size:,}-byte file")
            header, metadata = _parse_header(f.read(length), size - 8 - length)
    except HeaderError as err:
        raise SdcpuError(f"{path} is not a valid safetensors file: {err}; get the file again") from None
    except OSError as err:
        raise SdcpuError(f"cannot read {path}: {err.strerror}") from None
    return header, metadata, 8 + length


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The float tensors of a checked file, as float32 arrays, and its metadata. bf16 is widened by its
    bits (bf16 is float32's upper half); a tensor of any other dtype is refused by name."""
    header, metadata, start = _checked_header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        tensors = {}
        for name, entry in header.items():
            begin, end = (start + offset for offset in entry["data_offsets"])
            tensors[name] = _float32(path, name, entry["dtype"], data[begin:end]).reshape(entry["shape"])
    return tensors, metadata


def _float32(path: Path, name: str, dtype: str, raw: bytes) -> np.ndarray:
    if dtype == "BF16":
        return (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    if dtype not in FLOATS:
        raise SdcpuError(f"{path.name}: tensor {name!r} is {dtype}, not a float; is the file a LoRA?")
    return np.frombuffer(raw, dtype=np.dtype(FLOATS[dtype]).newbyteorder("<")).astype(np.float32)


def check_header(raw: bytes, data_bytes: int) -> dict[str, Any]:
    """The parsed header of a file whose tensor data is `data_bytes` long, without its metadata; raises
    HeaderError."""
    return _parse_header(raw, data_bytes)[0]


def _parse_header(raw: bytes, data_bytes: int) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_refuse_duplicates)
    except (UnicodeDecodeError, RecursionError, json.JSONDecodeError) as err:
        raise HeaderError(f"its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise HeaderError("its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("its __metadata__ is not a map of strings")
    spans = sorted((_span(name, entry, data_bytes), name) for name, entry in header.items())
    end = 0
    for (begin, stop), name in spans:
        if begin != end:
            problem = "overlaps the tensor before it" if begin < end else f"leaves {begin - end} bytes unused before it"
            raise HeaderError(f"tensor {name!r} {problem}")
        end = stop
    if end != data_bytes:
        raise HeaderError(f"its tensors cover {end:,} of the {data_bytes:,} data bytes")
    return header, metadata


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise HeaderError(f"its header names {key!r} twice")
        seen[key] = value
    return seen


def _span(name: str, entry: Any, data_bytes: int) -> tuple[int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise HeaderError(f"tensor {name!r} has the unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise HeaderError(f"tensor {name!r} has a shape that is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise HeaderError(f"tensor {name!r} has data_offsets that are not two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise HeaderError(f"tensor {name!r} has data_offsets {offsets} outside its {data_bytes:,} data bytes")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise HeaderError(f"tensor {name!r} holds {end - begin} bytes, not the {shape} x {dtype} its shape needs")
    return begin, end
