"""One batch item made into its PNG, wherever it runs (this process, or a Ray actor): the same call and
the same file as `sdcpu generate` (or `sdcpu inpaint`) with those settings, so the bytes are the same."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from sdcpu.batch.prompts import BatchItem
from sdcpu.cli.options import parse_loras
from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.images import save_png


def make_image(pipe: Any, item: BatchItem, out: Path) -> dict[str, Any]:
    """Generate `item` with the loaded pipeline `pipe`, write `out/<id>.png` whole, and return its result
    line (or, for a setting or input the pipeline refuses, a failure line with the reason)."""
    settings = dict(item.settings)
    prompt = settings.pop("prompt")
    try:
        settings["loras"] = parse_loras(settings.pop("loras", []))  # checked to be strings when read
        start = time.perf_counter()
        if "mask" in settings:
            image = settings.pop("init_image", None)
            if image is None:
                raise SdcpuError("mask needs an init_image to inpaint")
            result = pipe.inpaint(prompt, image, settings.pop("mask"), **settings)
        else:
            result = pipe(prompt, **settings)
        seconds = time.perf_counter() - start
        target = out / f"{item.id}.png"
        written = save_png(result.images[0], target, result.settings.png_metadata(0, result.runtime))
    except SdcpuError as err:
        return {"id": item.id, "line": item.line, "error": str(err)}
    record = {"id": item.id, "line": item.line, "file": target.name, "sha256": hashlib.sha256(written).hexdigest()}
    return record | {"seed": result.settings.seed, "settings": item.settings, "seconds": round(seconds, 4)}
