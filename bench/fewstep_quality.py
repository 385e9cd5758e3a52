"""The demo's few-step model and tiny decoder on the demo world's oracle (docs/quality.md).

    python bench/fewstep_quality.py [--count 240] [--json docs/fewstep_quality.json]

Held-out captions, seed = caption index (as `sdcpu eval`). Rows: the demo model at 20 DDIM steps with
guidance 7.5 (its defaults) through the full and the tiny decoder; the few-step model ("demo-lcm": LCM
scheduler, guidance off) at 1, 2 and 4 steps through each decoder; and the few-step model with ToDo's
approximate attention (`--token-downsampling 2`) at 1 and 4 steps. All at f32 compute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmark import machine  # bench/ is on the path when this file is run as a script

from sdcpu.runtime.evaluation import evaluate
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipeline import Pipeline

ROWS = [("demo", 20), ("demo-lcm", 1), ("demo-lcm", 2), ("demo-lcm", 4)]
TODO_ROWS = [("demo-lcm", 1), ("demo-lcm", 4)]


def measure(model: str, steps: int, decoder: str, count: int, todo: int = 0) -> dict:
    options = LoadOptions(compute_precision="f32", decoder=decoder, token_downsampling=todo or 1)
    pipe = Pipeline.load(model, options)
    started = time.perf_counter()
    report = evaluate(lambda caption, seed: pipe(caption, steps=steps, seed=seed).array[0], count)
    row = {"model": model, "steps": steps, "decoder": decoder, "token_downsampling": todo}
    row |= {"count": report.count, "accuracy": report.accuracy()}
    row |= {"scheduler": f"{pipe.scheduler_config.class_name}, guidance {pipe.defaults.guidance}"}
    row["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--json", type=Path, default=Path("docs/fewstep_quality.json"))
    args = parser.parse_args()
    rows = [measure(model, steps, decoder, args.count) for decoder in ("full", "tiny") for model, steps in ROWS]
    rows += [measure(model, steps, "full", args.count, todo=2) for model, steps in TODO_ROWS]
    args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
