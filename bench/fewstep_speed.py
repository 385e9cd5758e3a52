"""Few-step speed on the SD 1.5 architecture (random weights), 512x512: 1 and 4 steps, guidance off, with
the full VAE decoder and with TAESD's (a random AutoencoderTiny of TAESD's architecture), sdcpu next to
diffusers-PyTorch with the same settings (docs/benchmarks.md).

    python bench/fewstep_speed.py --work /tmp/sdcpu-modes --runs 3

Each runner is its own process: it loads, generates once to warm up (compilation, first-call costs), then
`--runs` times; the medians are "end to end after a warm start": text encoder, UNet steps, decode. Runners
alternate. sdcpu runs its int8-hybrid conversion with the load options `auto` picks on this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, random_pipeline

ROOT = Path(__file__).resolve().parents[1]
SD14 = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
# (steps, decoder, sdcpu's token downsampling factor: 0 off, 2 ToDo's approximate attention; diffusers: off)
TURBO_SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
CASES = [(1, "tiny", 0), (1, "tiny", 2), (1, "full", 0), (4, "tiny", 0), (4, "full", 0)]


def prepare_fast(work: Path) -> Path:
    """SD 1.5 random weights (sdcpu.bench.peers) with a random TAESD, converted at int8-hybrid. The scheduler
    is SD-Turbo's (Euler a, trailing timesteps), so the conversion takes int8-hybrid's few-step recipe."""
    from diffusers import AutoencoderTiny

    from sdcpu.export.calibration import CalibrationSettings
    from sdcpu.export.convert import convert

    source, taesd, out = work / "sd14-diffusers", work / "taesd", work / "sd14-turbo-int8-hybrid-tiny"
    if not (source / "model_index.json").exists():
        random_pipeline(SD14, source)
    config = source / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | TURBO_SCHEDULER, indent=2))
    if not (taesd / "config.json").exists():
        AutoencoderTiny().save_pretrained(taesd)  # diffusers' defaults are TAESD's architecture
    if not (out / "sdcpu.json").exists():
        # 8 recorded UNet calls instead of 32: random weights, so calibration sets no quality, only time
        calibration = CalibrationSettings(size=8)
        convert(str(source), out, "openvino", "int8-hybrid", calibration=calibration, tiny_vae=taesd, force=True)
    return out


def run_sdcpu(work: Path, steps: int, decoder: str, runs: int, todo: int) -> dict:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    options = LoadOptions(decoder=decoder, token_downsampling=todo or 1)
    pipe = Pipeline.load(work / "sd14-turbo-int8-hybrid-tiny", options)
    generate = lambda seed: pipe(PROMPT, steps=steps, guidance=0.0, scheduler="euler-a", seed=seed)  # noqa: E731
    info = generate(0).runtime
    times = []
    for seed in range(1, runs + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "compute": info["compute_precision"], "peak_rss_gb": peak_rss_gb()}


def run_diffusers(work: Path, steps: int, decoder: str, runs: int, todo: int) -> dict:
    import torch
    from diffusers import AutoencoderTiny, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(work / "sd14-diffusers", safety_checker=None)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    if decoder == "tiny":
        pipe.vae = AutoencoderTiny.from_pretrained(work / "taesd")
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int) -> None:
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, generator=torch.manual_seed(seed))

    generate(0)
    times = []
    for seed in range(1, runs + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "compute": "f32 (PyTorch)", "peak_rss_gb": peak_rss_gb()}


def spawn(runner: str, work: Path, case: tuple[int, str, int], runs: int) -> dict:
    steps, decoder, todo = case
    command = [sys.executable, __file__, "--work", str(work), "--runs", str(runs), "--worker", runner]
    command += ["--steps", str(steps), "--decoder", decoder, "--todo", str(todo if runner == "sdcpu" else 0)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{runner} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-modes"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=("sdcpu", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--todo", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--case", type=int, action="append", help="run only CASES[i] (repeatable); the rest kept")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fewstep_speed.json")
    args = parser.parse_args()
    if args.worker:
        run = run_sdcpu if args.worker == "sdcpu" else run_diffusers
        print("RESULT " + json.dumps(run(args.work, args.steps, args.decoder, args.runs, args.todo)), flush=True)
        return
    prepare_fast(args.work)
    kept = json.loads(args.out.read_text())["rows"] if args.case and args.out.exists() else []
    rows = {(r["steps"], r["decoder"], r.get("token_downsampling", 0)): r for r in kept}
    for case in [CASES[i] for i in args.case] if args.case else CASES:
        row: dict = {"steps": case[0], "decoder": case[1], "token_downsampling": case[2]}
        for runner in ("sdcpu", "diffusers"):
            result = spawn(runner, args.work, case, args.runs)
            row[runner] = result | {"median_s": statistics.median(result["seconds"])}
        row["ratio"] = row["sdcpu"]["median_s"] / row["diffusers"]["median_s"]
        print(json.dumps(row), flush=True)
        rows[case] = row | {"machine": machine()}
    ordered = [rows[c] for c in CASES if c in rows]
    args.out.write_text(json.dumps({"prompt": PROMPT, "rows": ordered}, indent=2) + "\n")


if __name__ == "__main__":
    main()
