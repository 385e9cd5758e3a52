"""Generation settings as AUTOMATIC1111's web UI writes them in a PNG's `parameters` text chunk, the
text most metadata readers and image sites parse, and back.

The layout (A1111's `create_infotext`): the prompt; a line `Negative prompt: ...` when there is one;
then one line of `Key: value` pairs joined by ", ", where a value holding a comma, a colon or a newline
is written as a JSON string. Sampler names are A1111's; the schedule (Karras) is its own key.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdcpu.errors import SdcpuError

# sdcpu scheduler -> (A1111 sampler, A1111 schedule type or None)
SAMPLERS = {
    "ddim": ("DDIM", None),
    "pndm": ("PNDM", None),
    "euler": ("Euler", None),
    "euler-a": ("Euler a", None),
    "dpm++2m": ("DPM++ 2M", None),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "lcm": ("LCM", None),
}
# A1111 >= 1.9: the schedule a sampler takes with scheduler "Automatic" (or none), where it is not uniform.
AUTOMATIC_SCHEDULE = {"DPM++ 2M": "karras"}
# A1111's own parser of the last line: a key, then a quoted string or anything up to the next comma. Unlike
# A1111's, the space before a key is at most 16 characters and a key at most 64: unbounded, a long line of
# spaces or of words without a colon costs quadratic time (40 KB took 16 s), and a PNG's text is anyone's.
PARAM = re.compile(r'\s{0,16}(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE = re.compile(r"^(\d+)x(\d+)$")
# A1111 key -> sdcpu keyword, and its type
FIELDS: tuple[tuple[str, str, type], ...] = (
    ("Steps", "steps", int),
    ("CFG scale", "guidance", float),
    ("Seed", "seed", int),
    ("Batch size", "num_images", int),
)


# sdcpu's control modes, as A1111's ControlNet extension names them
CONTROL_MODES = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "control": "ControlNet is more important",
}


def quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def format_parameters(settings: dict[str, Any], model: str, model_hash: str, version: str) -> str:
    """The `parameters` chunk for one image's settings (GenerationSettings as a dict)."""
    sampler, schedule = SAMPLERS[settings["scheduler"]]
    fields: dict[str, Any] = {"Steps": settings["steps"], "Sampler": sampler, "Schedule type": schedule}
    fields |= {"CFG scale": settings["guidance"], "Seed": settings["seed"]}
    fields |= {"Size": f"{settings['width']}x{settings['height']}", "Model hash": model_hash, "Model": model}
    if settings.get("strength") is not None:
        fields["Denoising strength"] = settings["strength"]
    if settings.get("mask") is not None:  # inpainting, as A1111 writes it
        fields |= {"Mask blur": settings["mask"]["blur"], "Mask padding": settings["mask"]["padding"] or None}
    if settings.get("loras"):  # A1111 reads LoRAs from the prompt's tags; it writes their hashes so
        fields["Lora hashes"] = ", ".join(f"{lora['name']}: {lora['hash']}" for lora in settings["loras"])
    for i, control in enumerate(settings.get("controls") or []):  # as A1111's ControlNet extension writes its units
        fields[f"ControlNet {i}"] = a1111_unit(control)
    if settings["num_images"] > 1:  # one seed draws the whole batch: the image is reproduced by its place in it
        fields |= {"Batch size": settings["num_images"], "Batch pos": settings["image_index"]}
    fields["Version"] = version
    line = ", ".join(f"{key}: {quote(value)}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {settings['negative_prompt']}" if settings["negative_prompt"] else ""
    return f"{settings['prompt']}{lora_tags(settings.get('loras') or [])}{negative}\n{line}"


def a1111_unit(record: dict[str, Any]) -> str:
    """A1111's `ControlNet N` value for a recorded ControlNet (ControlSetting.record)."""
    parts = {
        "Module": record["module"],
        "Model": f"{record['name']} [{record['hash']}]",
        "Weight": f"{record['weight']:g}",
        "Guidance Start": f"{record['start']:g}",
        "Guidance End": f"{record['end']:g}",
        "Control Mode": CONTROL_MODES[record["mode"]],
    }
    return ", ".join(f"{key}: {value}" for key, value in parts.items())


def lora_tags(loras: list[dict[str, Any]]) -> str:
    """A1111's `<lora:NAME:WEIGHT>` tags for recorded LoRAs, each after a space, as A1111 writes them
    into the prompt of its `parameters` (and as --from-png finds them again)."""
    return "".join(f" <lora:{lora['name']}:{lora['scale']:g}>" for lora in loras)


def parse_parameters(text: str) -> dict[str, Any]:
    """Generation keyword arguments (prompt, negative_prompt, steps, guidance, seed, width, height,
    scheduler) from a `parameters` chunk; keys that sdcpu has no equivalent for are left out."""
    *lines, last = text.strip().split("\n")
    if len(PARAM.findall(last)) < 3:  # as A1111: a last line of fewer than 3 pairs is part of the prompt
        lines, last = [*lines, last], ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    try:
        values = {key: json.loads(v) if v.startswith('"') and v.endswith('"') else v for key, v in PARAM.findall(last)}
        out |= {name: kind(values[key]) for key, name, kind in FIELDS if key in values}
        if "Size" in values and (size := SIZE.match(values["Size"])):
            out["width"], out["height"] = int(size.group(1)), int(size.group(2))
    except ValueError as err:
        raise SdcpuError(f"the image's generation parameters hold a value sdcpu cannot read ({err})") from None
    if "Sampler" in values:
        out["scheduler"] = scheduler_for(values["Sampler"], values.get("Schedule type"))
    return out


def scheduler_for(sampler: str, schedule: str | None, automatic: bool = False) -> str:
    """sdcpu's scheduler for an A1111 sampler name (any case; before A1111 1.9 the schedule was a " Karras"
    suffix) and schedule type. No schedule, or "Automatic", is uniform in a PNG's text (what A1111 wrote
    before 1.9, and what sdcpu writes); with `automatic` (A1111's API, 1.9 and later) it is the schedule
    A1111 picks for the sampler. Raises SdcpuError listing sdcpu's samplers for others."""
    base = sampler.removesuffix(" Karras")
    kind = (schedule or "automatic").lower()
    if kind == "automatic":
        kind = AUTOMATIC_SCHEDULE.get(base, "uniform") if automatic else "uniform"
    karras = kind == "karras" or sampler.endswith(" Karras")
    for name, (theirs, their_schedule) in SAMPLERS.items():
        if theirs.lower() == base.lower() and (their_schedule == "Karras") == karras:
            return name
    known = ", ".join(sampler_names())
    raise SdcpuError(f"the sampler {sampler!r} (schedule {schedule!r}) has no sdcpu equivalent; sdcpu has: {known}")


def sampler_names() -> list[str]:
    """A1111's names of sdcpu's schedulers (before 1.9: the Karras schedule in the name)."""
    return [f"{name} Karras" if schedule else name for name, schedule in SAMPLERS.values()]
