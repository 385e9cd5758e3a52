"""`sdcpu batch --ray` on this machine against the local batch: Ray with one actor on every core
(ray-1x2) and with one actor per core (ray-2x1), each command a fresh process (Ray starts its own
cluster), timed from outside:

    python bench/batch_ray.py --model MODEL --count 4 --steps 4 [--width 512 --height 512] [--repeats 1]

Each way runs a list of COUNT images and one of 2 x COUNT. The difference of the two is the time of COUNT
images at the steady rate, without the start-up (the cluster's start, the model loads), which cancels;
the start-up is what is left of the first. Each way runs once before, so that its compiled models are in
the cache (the thread count is part of their key). Ray's overhead per image is its steady time per image over the
local batch's on the same cores; `generation_s_per_image` is the mean of the images' own generation times
(results.jsonl's `seconds`, timed where they ran): the part of the overhead that is Ray's processes
sharing the cores with the networks, apart from what Ray adds between images. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line

WAYS = {
    "local": [],
    "ray-1x2": ["--ray", "--workers", "1", "--cpus-per-worker", "2"],
    "ray-2x1": ["--ray", "--workers", "2", "--cpus-per-worker", "1"],
}


def _batch(prompts: Path, out: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdcpu", "batch", str(prompts), "--out", str(out), *args], check=True)
    return time.perf_counter() - start


def _lists(folder: Path, count: int) -> tuple[Path, Path]:
    lines = [json.dumps({"prompt": f"a red circle {i}", "seed": i}) + "\n" for i in range(2 * count)]
    (folder / "short.jsonl").write_text("".join(lines[:count]))
    (folder / "long.jsonl").write_text("".join(lines))
    return folder / "short.jsonl", folder / "long.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--steps", default="4")
    parser.add_argument("--width", default=None)
    parser.add_argument("--height", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (medians are reported)")
    parser.add_argument("--ways", default=",".join(WAYS), help="which of: " + ", ".join(WAYS))
    given = parser.parse_args()
    ways = {way: WAYS[way] for way in given.ways.split(",")}
    common = ["--steps", given.steps] + (["--model", given.model] if given.model else [])
    common += ["--width", given.width, "--height", given.height] if given.width else []
    times: dict[str, dict[str, list[float]]] = {way: {"short": [], "long": [], "generation": []} for way in ways}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        short, long = _lists(folder, given.count)
        # Each way once before timing: an actor's thread count is part of its compiled models' cache key.
        (folder / "one.jsonl").write_text(short.read_text().splitlines()[0] + "\n")
        for i, args in enumerate(ways.values()):
            _batch(folder / "one.jsonl", folder / f"warm-{i}", [*common, *args])
        for run in range(given.repeats):  # the ways interleaved, so that a slow spell of the machine hits all
            for i, (way, args) in enumerate(ways.items()):
                for size, prompts in (("short", short), ("long", long)):
                    out = folder / f"{run}-{i}-{size}"
                    times[way][size].append(_batch(prompts, out, [*common, *args]))
                records = (out / "results.jsonl").read_text().splitlines()
                times[way]["generation"].append(statistics.mean(json.loads(line)["seconds"] for line in records))
    report: dict[str, object] = {"machine": machine_line(), "images": [given.count, 2 * given.count]}
    local = None
    for way, measured in times.items():
        first, second = statistics.median(measured["short"]), statistics.median(measured["long"])
        per_image = (second - first) / given.count
        local = local or per_image
        report[way] = {
            "wall_s": [round(first, 2), round(second, 2)],
            "steady_s_per_image": round(per_image, 3),
            "steady_images_per_min": round(60 / per_image, 2),
            "startup_s": round(first - given.count * per_image, 2),
            "per_image_over_local": round(per_image / local - 1, 4),
            "generation_s_per_image": round(statistics.median(measured["generation"]), 3),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
