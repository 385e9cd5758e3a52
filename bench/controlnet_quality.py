"""The demo's "edges" ControlNet on the oracle: 240 held-out captions, each with the edge map of another
shape at another place as its control, at the demo's defaults (20 DDIM steps, guidance 7.5, seed = the
caption's index), OpenVINO, f32 compute.

The control scene is the caption's scene with its shape and position moved on (circle -> square ->
triangle -> circle; left -> right -> top -> bottom -> centre -> left), drawn exactly and put through the
canny annotator, as a user would with `--control-module canny`. For each weight and caption, the oracle
reads the image: it "follows" when it shows the control's shape and position in the caption's colour.
Also reported: the caption's background and size, the caption's own shape and position (what it shows
instead), and, per weight, the same with captions naming the colours alone ("a red on a blue background").
Weight 0 must give the base model's images bit for bit. Writes docs/controlnet_quality.json.

    python bench/controlnet_quality.py --controlnet src/sdcpu/models/demo/controlnets/edges --weights 0,0.5,1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from sdcpu.bench.machine import machine_line
from sdcpu.demo import world

ROOT = Path(__file__).resolve().parents[1]


def control_scene(scene: world.Scene) -> world.Scene:
    shapes, positions = list(world.SHAPES), list(world.POSITIONS)
    shape = shapes[(shapes.index(scene.shape) + 1) % len(shapes)]
    position = positions[(positions.index(scene.position) + 1) % len(positions)]
    return dataclasses.replace(scene, shape=shape, position=position)


def colour_caption(scene: world.Scene) -> str:
    return f"a {scene.colour} on a {scene.background} background"


def tally(rows: list[dict[str, bool]]) -> dict[str, float]:
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}


def measure(controlnet: Path, weights: list[float], count: int) -> dict:
    from sdcpu import Pipeline
    from sdcpu.runtime.controlnet.annotators import canny
    from sdcpu.runtime.controlnet.setting import ControlSetting
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32"))
    _, held_out = world.split_scenes()
    picks = sorted({int(i) for i in np.linspace(0, len(held_out) - 1, min(count, len(held_out))).round()})
    base = {i: np.asarray(pipe(held_out[i].caption(i), seed=i).images[0]) for i in picks}
    results: dict[str, dict] = {}
    for weight in weights:
        for captions in ("caption", "colours"):
            rows, same = [], 0
            for i in picks:
                scene, steer = held_out[i], control_scene(held_out[i])
                edges = canny(world.render(steer))
                prompt = scene.caption(i) if captions == "caption" else colour_caption(scene)
                control = ControlSetting.of(controlnet, edges, weight)
                image = np.asarray(pipe(prompt, seed=i, controls=[control]).images[0])
                same += int(captions == "caption" and np.array_equal(image, base[i]))
                seen = world.judge(image)
                rows.append(
                    {
                        "follows": seen["shape"] == steer.shape
                        and seen["position"] == steer.position
                        and seen["colour"] == scene.colour,
                        "control_shape": seen["shape"] == steer.shape,
                        "control_position": seen["position"] == steer.position,
                        "caption_colour": seen["colour"] == scene.colour,
                        "caption_background": seen["background"] == scene.background,
                        "size": seen["size"] == scene.size,
                        "caption_shape": seen["shape"] == scene.shape,
                        "caption_position": seen["position"] == scene.position,
                    }
                )
            entry = tally(rows)
            if captions == "caption":
                entry["bit_for_bit_with_the_base_model"] = same / len(picks)
            results[f"weight {weight:g}, {captions}"] = entry
            print(
                f"weight {weight:g}, {captions}: {json.dumps({k: round(v, 3) for k, v in entry.items()})}", flush=True
            )
    return {"machine": machine_line(), "captions": len(picks), "controlnet": controlnet.name, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--controlnet", type=Path, required=True, help="the converted demo ControlNet")
    parser.add_argument("--weights", default="0,0.5,1")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "controlnet_quality.json")
    args = parser.parse_args()
    result = measure(args.controlnet, [float(w) for w in args.weights.split(",")], args.count)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
