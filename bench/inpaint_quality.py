"""Inpainting quality on the demo model (latent blending), by the demo world's oracle, next to txt2img.

    python bench/inpaint_quality.py [--count 240] [--json docs/inpaint_quality.json]

For each held-out caption (the scenes and seeds of `sdcpu eval`): render another scene with the same
background and position but another shape, colour and size; mask the square where the caption's shape
must appear (the old shape's place); inpaint with the caption; let the oracle score the result. Pixels
outside the mask and its blurred edge (3 blur radii) must be the original's: they are counted. txt2img
runs on the same captions and seeds in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sdcpu.bench.machine import machine_line as machine
from sdcpu.demo import world as world
from sdcpu.demo.oracle import evaluate
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.settings import MaskSettings

STEPS, GUIDANCE, HALF = 20, 7.5, 18  # the mask: a square of 2 x 18 pixels around the position (large shapes: 12.8)


def other_scene(scene: world.Scene, index: int) -> world.Scene:
    shape = world.SHAPES[(world.SHAPES.index(scene.shape) + 1) % len(world.SHAPES)]
    colours = [c for c in world.COLOURS if c not in (scene.colour, scene.background)]
    size = "small" if scene.size == "large" else "large"
    return world.Scene(shape, colours[index % len(colours)], size, scene.position, scene.background)


def mask_for(position: str, grow: int = 0) -> Image.Image:
    cx, cy = (round(v * world.SIZE) for v in world.POSITIONS[position])
    mask = Image.new("L", (world.SIZE, world.SIZE), 0)
    ImageDraw.Draw(mask).rectangle((cx - HALF - grow, cy - HALF - grow, cx + HALF + grow, cy + HALF + grow), fill=255)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--json", type=Path, default=Path("docs/inpaint_quality.json"))
    args = parser.parse_args()
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32"))
    _, held_out = world.split_scenes()
    settings = MaskSettings()
    changed = {"pixels": 0, "outside": 0}

    def inpaint(caption: str, seed: int) -> np.ndarray:
        scene = held_out[seed]
        start = world.render(other_scene(scene, seed), np.random.default_rng(seed))
        result = pipe.inpaint(caption, start, mask_for(scene.position), steps=STEPS, guidance=GUIDANCE, seed=seed)
        outside = np.asarray(mask_for(scene.position, 3 * settings.blur)) == 0
        out, original = np.asarray(result.images[0]), np.asarray(start)
        changed["pixels"] += int((out[outside] != original[outside]).any(axis=-1).sum())
        changed["outside"] += int(outside.sum())
        return result.array[0]

    def txt2img(caption: str, seed: int) -> np.ndarray:
        return pipe(caption, steps=STEPS, guidance=GUIDANCE, seed=seed).array[0]

    started = time.perf_counter()
    reports = {"txt2img": evaluate(txt2img, args.count), "inpaint": evaluate(inpaint, args.count)}
    data = {
        "machine": machine(),
        "settings": {"steps": STEPS, "guidance": GUIDANCE, "scheduler": "ddim", "mask_half_side": HALF, "blur": 4},
        "count": reports["txt2img"].count,
        "accuracy": {name: report.accuracy() for name, report in reports.items()},
        "outside_mask": changed,
        "seconds": round(time.perf_counter() - started, 1),
    }
    ratio = data["accuracy"]["inpaint"]["all"] / max(data["accuracy"]["txt2img"]["all"], 1e-9)
    data["inpaint_over_txt2img"] = ratio
    args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
