"""The one JSON reader: every JSON file, PNG text chunk and request body sdcpu reads goes through it.

Python's `json` believes what it is given: a file of 100,000 nested brackets ends in `RecursionError`
(or worse, in the code that walks the result), a huge file is read whole, and `NaN`, `Infinity` and
`1e400` become floats that no JSON writer can echo back. Here the size is checked before parsing, the
nesting depth is counted before the parser recurses (brackets outside strings, vectorised), and, where
asked, non-finite numbers are refused. Every failure is an SdcpuError naming what was read.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.errors import SdcpuError

# The largest JSON sdcpu reads on purpose is a tokenizer.json (CLIP's is 2 MB; SentencePiece-based ones
# reach 20 MB). Configs, manifests and PNG chunks are kilobytes.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024  # a PNG text chunk
# Real configs nest 3-6 levels (a tokenizer.json's normalizer sequences a few more); 100 leaves room.
MAX_DEPTH = 100

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


class JsonError(SdcpuError, ValueError):
    """JSON that is malformed, too large, too deep or (where refused) holds a non-finite number."""


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in `raw`, brackets inside strings not counted."""
    skeleton = np.frombuffer(_STRINGS.sub(b'""', raw), np.uint8)
    steps = np.isin(skeleton, _OPEN).astype(np.int32) - np.isin(skeleton, _CLOSE).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(
    data: str | bytes,
    what: str,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_depth: int = MAX_DEPTH,
    strict: bool = False,
) -> Any:
    """`data` parsed, or JsonError naming `what` ("the manifest x/sdcpu.json", "the request body").
    `strict` refuses, beyond that, what no JSON writer can echo back: NaN, Infinity, numbers beyond float
    range (1e400) and text that is not Unicode (a lone surrogate, "\\udcff")."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise JsonError(f"{what} is {len(raw):,} bytes of JSON, over the {max_bytes:,}-byte limit")
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise JsonError(f"{what} nests {depth} levels deep, over the limit of {max_depth}")
    hooks: dict[str, Any] = {"parse_float": _finite_float, "parse_constant": _no_constant} if strict else {}
    try:
        data = json.loads(raw, **hooks)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JsonError(f"{what} is not valid JSON: {err}") from None
    if strict:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonError(f"{what} holds text that is not Unicode (a lone surrogate such as \\udcff)") from None
    return data


def read_json(path: Path, what: str | None = None, *, max_bytes: int = MAX_FILE_BYTES, strict: bool = False) -> Any:
    """The JSON file at `path`, its size checked before it is read. JsonError names it (or `what`) when it
    is unreadable, too large, too deep or malformed."""
    name = what or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise JsonError(f"{name} is {size:,} bytes of JSON, over the {max_bytes:,}-byte limit")
        raw = path.read_bytes()
    except OSError as err:
        raise JsonError(f"cannot read {name}: {err.strerror or err}") from None
    return parse_json(raw, name, max_bytes=max_bytes, strict=strict)


def read_json_object(path: Path, what: str | None = None) -> dict[str, Any]:
    """As `read_json`, for the files that must hold a JSON object (configs, manifests)."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise JsonError(f"{what or path} holds a JSON {type(data).__name__}, not an object")
    return data
