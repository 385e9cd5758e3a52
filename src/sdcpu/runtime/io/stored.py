"""Settings stored in a PNG, read back (`generate --from-png`, the server's `png-info`): the one schema
check of what a PNG's text chunks may hold.

A PNG is input like any other: its chunks may come from another tool, be edited by hand, or be built to
break a reader. So sdcpu's JSON chunk is read with the JSON bounds (format/json_bounds.py), must be an
object, and each setting it gives must have its type before anything uses it; A1111's `parameters` text
is parsed into the same keys and checked the same way. A value of the wrong type is refused, naming the
key, rather than turned into something else.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import MAX_CHUNK_BYTES, parse_json
from sdcpu.runtime.io.images import decode_image
from sdcpu.runtime.io.infotext import lora_tags, parse_parameters

LORA_HASHES = re.compile(r'Lora hashes: "([^"]{0,4096})"')  # A1111's: "NAME: HASH, NAME: HASH"

# The settings a PNG may give, and their JSON types (bool is not an integer here).
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "steps": (int,),
    "guidance": (int, float),
    "seed": (int,),
    "width": (int,),
    "height": (int,),
    "scheduler": (str,),
    "num_images": (int,),
    "deep_cache": (int,),
}
# The records of sdcpu's chunk that --from-png reads beyond the settings, and the fields it reads of each.
RECORD_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "loras": {"name": (str,), "scale": (int, float)},
    "controls": {"name": (str,)},
}


def check_settings(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings of `values` that sdcpu reads, each checked against SETTING_TYPES; SdcpuError names the
    first that is not of its type. Other keys are left out."""
    for key, value in values.items():
        kinds = SETTING_TYPES.get(key)
        if kinds is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise SdcpuError(f"{where} holds {key} = {_shown(value)}, which is not {_names(kinds)}")
    return {key: value for key, value in values.items() if key in SETTING_TYPES}


def _check_records(data: dict[str, Any], where: str) -> None:
    for key, fields in RECORD_TYPES.items():
        records = data.get(key)
        if records is None:
            continue
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise SdcpuError(f"{where} holds {key} = {_shown(records)}, which is not a list of objects")
        for record in records:
            for field, kinds in fields.items():
                if isinstance(record.get(field), bool) or not isinstance(record.get(field), kinds):
                    raise SdcpuError(f"{where} holds a {key} record whose {field} is not {_names(kinds)}")


def stored_settings(text: dict[str, str], where: str) -> dict[str, Any]:
    """The generation settings of a PNG's text chunks (`text`): sdcpu's own JSON chunk where present,
    else A1111's `parameters`. Raises SdcpuError, naming `where`, when they hold neither or are damaged."""
    if "sdcpu" in text:
        ours = parse_json(text["sdcpu"], f"the sdcpu chunk of {where}", max_bytes=MAX_CHUNK_BYTES, strict=True)
        if not isinstance(ours, dict):
            raise SdcpuError(f"the sdcpu chunk of {where} is damaged: a JSON {type(ours).__name__}, not an object")
        settings = check_settings(ours, f"the sdcpu chunk of {where}")
        _check_records(ours, f"the sdcpu chunk of {where}")
        if ours.get("noise") == "given":
            warnings.warn(f"{where} was generated from given noise: its seed does not reproduce it", stacklevel=3)
        if ours.get("loras") and "prompt" in settings:  # as A1111's tags, found again in --lora-dir
            settings["prompt"] += lora_tags(ours["loras"])
        if ours.get("controls"):  # their images are not stored: said, so that a different image is no surprise
            names = ", ".join(control["name"] for control in ours["controls"])
            warnings.warn(
                f"{where} was steered by ControlNet {names}, whose control images a PNG does not hold: "
                "give --control FOLDER:IMAGE again to steer this run the same way",
                stacklevel=3,
            )
        return settings
    if "parameters" in text:
        if len(text["parameters"]) > MAX_CHUNK_BYTES:
            raise SdcpuError(f"the parameters chunk of {where} is over the {MAX_CHUNK_BYTES:,}-byte limit")
        return check_settings(parse_parameters(text["parameters"]), f"the parameters of {where}")
    raise SdcpuError(f"{where} holds no generation settings (no sdcpu or A1111 parameters text chunk)")


def stored_lora_hashes(text: dict[str, str]) -> dict[str, str]:
    """The LoRAs an image was made with, by name, and A1111's short hash of each: from sdcpu's chunk, else
    from A1111's `Lora hashes`. Read after `stored_settings` has checked the chunks."""
    if "sdcpu" in text:
        ours = parse_json(text["sdcpu"], "the sdcpu chunk", max_bytes=MAX_CHUNK_BYTES, strict=True)
        return {lora["name"]: lora["hash"] for lora in ours.get("loras") or [] if isinstance(lora.get("hash"), str)}
    found = LORA_HASHES.search(text.get("parameters", "")[:MAX_CHUNK_BYTES])
    pairs = [entry.partition(":") for entry in found[1].split(",")] if found else []
    return {name.strip(): digest.strip() for name, _, digest in pairs if name.strip() and digest.strip()}


def png_text(source: Path | bytes, name: str = "PNG", **limits: Any) -> dict[str, str]:
    """The text chunks of an image (a path or its bytes), read by the one image reader (`limits`:
    its max_pixels and formats)."""
    image = decode_image(source, name, **limits)
    return {key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)}


def read_png(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The generation settings stored in the PNG at `path` (`stored_settings`) and the hashes of its LoRAs
    (`stored_lora_hashes`), from one read of the file."""
    text = png_text(path)
    return stored_settings(text, str(path)), stored_lora_hashes(text)


def generation_request(prompt: str | None, given: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one generation: the settings stored in an image (`read_png`; {} for none),
    overridden by those given explicitly (`given`, None meaning not given), and `prompt` when there is one."""
    request = dict(stored)
    request |= {key: value for key, value in given.items() if value is not None}
    if prompt is not None:
        request["prompt"] = prompt
    if "prompt" not in request:
        raise SdcpuError("give a PROMPT, or --from-png FILE to run the settings stored in an image again")
    return request


def _names(kinds: tuple[type, ...]) -> str:
    return {str: "text", int: "a whole number", float: "a number"}[kinds[-1]]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
