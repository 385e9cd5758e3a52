"""A batch's prompt list: JSON Lines, CSV, or either on stdin (`-`). One image per line, each line holding a
`prompt` and any generate setting; the command line's options are the defaults.

Every line gets an `id`, its image's file name: the line's own, or one derived from its settings (with
the defaults applied), so that the same list run again names the same images and a resumed batch knows
what it has. A line without a seed gets one derived from its id, for the same reason. A line that cannot
run is a `BadLine` with its reason, never the end of the batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import parse_json
from sdcpu.format.names import is_plain_name
from sdcpu.runtime.io.stored import SETTING_TYPES, check_settings

MAX_LINE_BYTES = 1024 * 1024
# The settings a line may give beyond stored.SETTING_TYPES, and their JSON types.
MORE_TYPES: dict[str, tuple[type, ...]] = {
    "init_image": (str,),  # a path, relative to the prompt file's folder (stdin: the working folder)
    "mask": (str,),  # with init_image: inpaint its white part
    "strength": (int, float),
    "loras": (list,),  # "FILE[:SCALE]" strings, as generate's --lora
}
CSV_NUMBERS: dict[str, type] = {"steps": int, "seed": int, "width": int, "height": int, "deep_cache": int}
CSV_NUMBERS |= {"guidance": float, "strength": float}


@dataclass(frozen=True)
class BatchItem:
    id: str
    line: int  # 1-based, in the prompt list
    settings: dict[str, Any]  # prompt and every setting, the seed included


@dataclass(frozen=True)
class BadLine:
    line: int
    id: str | None
    reason: str


def read_prompts(source: str, defaults: dict[str, Any]) -> tuple[list[BatchItem], list[BadLine]]:
    """The items of the prompt list at `source` (a path, or `-` for stdin), `defaults` applied, and its bad
    lines. SdcpuError when the list cannot be read at all, or holds no line."""
    text, base = _read(source)
    rows = _csv_rows(text) if source.lower().endswith(".csv") else _jsonl_rows(text)
    if not rows:
        raise SdcpuError(f"the prompt list {source} is empty; give one JSON object (or CSV row) per image")
    items: list[BatchItem] = []
    bad: list[BadLine] = []
    taken: dict[str, int] = {}
    for number, row in rows:
        try:
            if isinstance(row, str):
                raise SdcpuError(row)
            item = _item(number, row, defaults, base, taken)
        except SdcpuError as err:
            given = row.get("id") if isinstance(row, dict) else None
            bad.append(BadLine(number, str(given) if given is not None else None, str(err)))
            continue
        taken[item.id] = number
        items.append(item)
    return items, bad


def _read(source: str) -> tuple[str, Path]:
    if source == "-":
        return sys.stdin.read(), Path.cwd()  # absolute, as the list's folder is
    path = Path(source).expanduser()
    if not path.is_file():
        raise SdcpuError(f"the prompt list {source} does not exist or is not a file")
    try:
        return path.read_text(encoding="utf-8"), path.absolute().parent
    except (OSError, UnicodeDecodeError) as err:
        raise SdcpuError(f"cannot read the prompt list {source}: {err}") from None


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    # (line number, the object, or why it is not one); blank lines and #-comments are skipped
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            row = parse_json(line, f"line {number}", max_bytes=MAX_LINE_BYTES, max_depth=8, strict=True)
        except SdcpuError as err:
            rows.append((number, str(err)))
            continue
        rows.append((number, row if isinstance(row, dict) else f"line {number} is not a JSON object"))
    return rows


def _csv_rows(text: str) -> list[tuple[int, dict[str, Any] | str]]:
    # A header row of setting names; empty cells are not given; numbers and `loras` (";"-separated) parsed.
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        given: dict[str, Any] = {key: value for key, value in row.items() if key and value not in (None, "")}
        try:
            for key, kind in CSV_NUMBERS.items():
                if key in given:
                    given[key] = kind(given[key])
        except ValueError as err:
            rows.append((number, f"line {number}: {err}"))
            continue
        if "loras" in given:
            given["loras"] = [spec.strip() for spec in given["loras"].split(";") if spec.strip()]
        rows.append((number, given))
    return rows


def _item(number: int, row: dict[str, Any], defaults: dict[str, Any], base: Path, taken: dict[str, int]) -> BatchItem:
    unknown = sorted(set(row) - {"id"} - set(MORE_TYPES) - set(SETTING_TYPES))
    if unknown:
        raise SdcpuError(f"line {number}: unknown setting {', '.join(unknown)}")
    settings = {key: value for key, value in defaults.items() if value is not None} | row
    given_id = settings.pop("id", None)
    check_settings(settings, f"line {number}")
    for key, kinds in MORE_TYPES.items():
        if key in settings and (isinstance(settings[key], bool) or not isinstance(settings[key], kinds)):
            raise SdcpuError(f"line {number}: {key} must be {'a list' if list in kinds else kinds[0].__name__}")
    if not isinstance(settings.get("prompt"), str):
        raise SdcpuError(f"line {number}: no prompt")
    if "num_images" in settings:
        raise SdcpuError(f"line {number}: a batch makes one image per line; repeat the line instead of num_images")
    if not all(isinstance(spec, str) for spec in settings.get("loras", [])):
        raise SdcpuError(f'line {number}: loras must be a list of "FILE" or "FILE:SCALE" texts')
    # The id from the line as written: moving the list and its images elsewhere keeps the ids.
    item_id = _given_id(number, given_id, taken) if given_id is not None else _derived_id(settings, taken)
    for key in ("init_image", "mask"):  # paths relative to the list's folder
        if key in settings:
            settings[key] = str((base / settings[key]).expanduser())
    if settings.get("loras"):
        settings["loras"] = [str(base / spec) for spec in settings["loras"]]
    settings.setdefault("seed", _seed_of(item_id))
    return BatchItem(item_id, number, settings)


def _given_id(number: int, given: Any, taken: dict[str, int]) -> str:
    if isinstance(given, bool) or not isinstance(given, (str, int)):
        raise SdcpuError(f"line {number}: id must be text or a whole number")
    text = str(given)
    if not is_plain_name(text, ".png") or text.startswith("."):
        raise SdcpuError(f"line {number}: id {text!r} cannot be a file name (no /, no leading dot, 250 bytes at most)")
    if text in taken:
        raise SdcpuError(f"line {number}: id {text!r} is already used on line {taken[text]}")
    return text


def _derived_id(settings: dict[str, Any], taken: dict[str, int]) -> str:
    # The same settings give the same id; a repeated line gets -2, -3, ... (and so a seed of its own).
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    candidate, n = digest, 1
    while candidate in taken:
        n += 1
        candidate = f"{digest}-{n}"
    return candidate


def _seed_of(item_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"seed:{item_id}".encode()).digest()[:8], "big") >> 1  # below 2**63
