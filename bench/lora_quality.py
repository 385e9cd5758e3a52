"""The demo's "night" LoRA on the oracle: 240 held-out captions at the demo's defaults (20 DDIM steps,
guidance 7.5, seed = the caption's index), at each scale, run time (OpenVINO, f32 compute).

Per scale: how many backgrounds the oracle reads as the LoRA's target (black), counted over the scenes
whose own background is another colour; how often shape, colour, size and position stay right, and all
four at once, counted over the scenes whose shape is not black (a black shape on the night background
cannot be seen, so there is nothing to keep); and whether scale 0 gives the base model's images bit for
bit; and the mean brightness of the background (the top and bottom 3 rows of pixels, 0 to 255), which places
an intermediate scale between the two. Writes docs/lora_quality.json.

    python bench/lora_quality.py --scales 0,0.5,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sdcpu.bench.machine import machine_line
from sdcpu.demo import world
from sdcpu.models import DEMO_ROOT

ROOT = Path(__file__).resolve().parents[1]
NIGHT = DEMO_ROOT / "loras" / "night.safetensors"
TARGET = "black"
KEPT = ("shape", "colour", "size", "position")


def measure(scales: list[float], count: int) -> dict:
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32"))
    _, held_out = world.split_scenes()
    picks = sorted({int(i) for i in np.linspace(0, len(held_out) - 1, min(count, len(held_out))).round()})
    base = {i: pipe(held_out[i].caption(i), seed=i).images[0] for i in picks}
    results = {}
    for scale in scales:
        night = nights = kept_rows = same = 0
        brightness = []
        kept = dict.fromkeys((*KEPT, "all"), 0)
        for i in picks:
            scene = held_out[i]
            image = pipe(scene.caption(i), seed=i, loras=[(NIGHT, scale)]).images[0]
            seen = world.judge(image)
            pixels = np.asarray(image, dtype=np.float32)
            border = np.concatenate([pixels[:3].reshape(-1, 3), pixels[-3:].reshape(-1, 3)])
            brightness.append(float(border.mean()))
            same += int(np.array_equal(np.asarray(image), np.asarray(base[i])))
            if scene.background != TARGET:
                nights += 1
                night += int(seen["background"] == TARGET)
            if scene.colour != TARGET:
                kept_rows += 1
                right = {a: seen[a] == getattr(scene, a) for a in KEPT}
                kept = {a: kept[a] + int(right[a] if a != "all" else all(right.values())) for a in kept}
        results[f"{scale:g}"] = {
            "background_is_target": night / nights,
            **{f"{a}_kept": n / kept_rows for a, n in kept.items()},
            "identical_to_base": same / len(picks),
            "background_brightness": float(np.mean(brightness)),
            "scenes": len(picks),
        }
        print(scale, results[f"{scale:g}"], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="0,0.5,1")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "lora_quality.json")
    args = parser.parse_args()
    results = measure([float(s) for s in args.scales.split(",")], args.count)
    record = {"machine": machine_line(), "lora": NIGHT.name, "target": TARGET, "by_scale": results}
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
