"""Side-by-side benchmark on the real SD 1.5 architecture with random weights.

Builds the pipeline from `../shared/reference-configs/stable-diffusion-v1-4` (SD 1.4 and 1.5 share the
architecture), converts it to OpenVINO IR and ONNX (fp32), then runs diffusers-PyTorch and sdcpu on both
backends, each in its own process so that peak RSS is its own, alternating the runners round by round.
Reports medians: seconds per guided UNet step at 512x512, text encoder and VAE decode time, end-to-end
time, load time and peak RSS, and writes them to docs/benchmarks.md.

    python bench/benchmark.py --work /tmp/sdcpu-bench --steps 20 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line
from sdcpu.bench.peers import random_pipeline, run_pytorch, run_sdcpu

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
RUNNERS = ("pytorch", "sdcpu-openvino", "sdcpu-onnxruntime")


def worker(args: argparse.Namespace) -> None:
    if args.worker == "pytorch":
        result = run_pytorch(args.work / "diffusers", args.steps)
    else:
        backend = args.worker.removeprefix("sdcpu-")
        folder = args.work / ("openvino" if backend == "openvino" else "onnx")
        result = run_sdcpu(folder, backend, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


def prepare(work: Path) -> dict:
    from sdcpu.export.convert import convert

    times = {}
    if not (work / "diffusers" / "unet").exists():
        random_pipeline(REFERENCE, work / "diffusers")
    for fmt in ("openvino", "onnx"):
        if not (work / fmt / "sdcpu.json").exists():
            start = time.perf_counter()
            convert(str(work / "diffusers"), work / fmt, fmt, "fp32", force=True)
            times[fmt] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-bench"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each runner, alternating")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    args.work.mkdir(parents=True, exist_ok=True)
    convert_times = prepare(args.work)
    results: dict[str, list[dict]] = {r: [] for r in args.runners.split(",")}
    for round_ in range(args.rounds):
        for runner in results:
            cmd = [sys.executable, __file__, "--worker", runner, "--work", str(args.work), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[runner].append(json.loads(out.split("RESULT ", 1)[1]))
            print(f"round {round_ + 1} {runner}: {results[runner][-1]}", flush=True)
    summary = {r: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for r, runs in results.items()}
    record = {
        "machine": machine_line(),
        "steps": args.steps,
        "rounds": args.rounds,
        "convert_s": convert_times,
        "median": summary,
        "runs": results,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
