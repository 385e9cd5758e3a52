"""`sdcpu batch` against a loop of `sdcpu generate` calls, and the batch's cost over its images' own
generation times, each command a fresh process, timed from outside:

    python bench/batch_speed.py --model MODEL --count 20 --steps 8 [--width 512 --height 512]

Prints one JSON object: wall seconds and images per minute for each, the sum of the batch's generation
times (results.jsonl's `seconds`), and its overhead (wall time past that sum, model load included and
also without it: the load is timed by a batch of one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line


def _run(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sdcpu", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--steps", default="8")
    parser.add_argument("--width", default=None)
    parser.add_argument("--height", default=None)
    given = parser.parse_args()
    common = ["--steps", given.steps] + (["--model", given.model] if given.model else [])
    common += ["--width", given.width, "--height", given.height] if given.width else []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        lines = [{"prompt": f"a red circle {i}", "seed": i} for i in range(given.count)]
        (folder / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        (folder / "one.jsonl").write_text(json.dumps({"prompt": "a red circle", "seed": 0}) + "\n")
        load = _run(["batch", str(folder / "one.jsonl"), "--out", str(folder / "one"), *common])
        one = json.loads((folder / "one" / "results.jsonl").read_text())["seconds"]
        batch = _run(["batch", str(folder / "p.jsonl"), "--out", str(folder / "out"), *common])
        results = [json.loads(line) for line in (folder / "out" / "results.jsonl").read_text().splitlines()]
        generating = sum(record["seconds"] for record in results)
        loop = sum(
            _run(["generate", line["prompt"], "--seed", str(line["seed"]), "--out", str(folder / f"g{i}.png"), *common])
            for i, line in enumerate(lines)
        )
    startup = load - one  # a process's start and model load, as a batch of one shows it
    print(
        json.dumps(
            {
                "machine": machine_line(),
                "images": given.count,
                "batch_s": round(batch, 2),
                "batch_images_per_min": round(given.count / batch * 60, 1),
                "generate_loop_s": round(loop, 2),
                "generate_loop_images_per_min": round(given.count / loop * 60, 1),
                "sum_of_generation_s": round(generating, 2),
                "startup_s": round(startup, 2),
                "batch_overhead_past_startup": round((batch - startup - generating) / generating, 4),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
