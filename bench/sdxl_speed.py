"""SDXL-Turbo's case on the real SDXL architecture (random weights): 512x512, 1 step, guidance off, the
tiny decoder (a random AutoencoderTiny of TAESDXL's architecture), warm, end to end; sdcpu next to
diffusers-PyTorch fp32 and optimum-intel's OVStableDiffusionXLPipeline on the same int8 graphs.

    python bench/sdxl_speed.py --work /tmp/sdxl --runs 3 [--optimum-intel /tmp/ov/bin/python]

The random pipeline is built from ../shared's SDXL base configs, with SDXL-Turbo's scheduler (Euler a
over "trailing" timesteps). sdcpu converts it at int8 with `--tiny-vae`; the convert's time and peak
RSS are recorded. Each runner is its own process: it loads, generates once to warm up, then `--runs`
times; runners alternate over `--rounds`, and each row is the median of all runs, with the runner's
peak RSS. Results: docs/sdxl_speed.json, summarised in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, random_pipeline

ROOT = Path(__file__).resolve().parents[1]
SDXL = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-xl-base-1.0"
TURBO_SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
SIZE, STEPS = 512, 1
OPTIMUM = """
import json, sys, time, resource, torch
from optimum.intel import OVStableDiffusionXLPipeline
pipe = OVStableDiffusionXLPipeline.from_pretrained(sys.argv[1])
run = lambda seed: pipe(sys.argv[3], num_inference_steps=1, guidance_scale=0.0, height=512, width=512,
                        generator=torch.manual_seed(seed))
run(0)
times = []
for seed in range(1, int(sys.argv[2]) + 1):
    start = time.perf_counter(); run(seed); times.append(time.perf_counter() - start)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print("RESULT " + json.dumps({"seconds": times, "compute": "OpenVINO default", "peak_rss_gb": rss}))
"""


def prepare(work: Path) -> dict:
    """The random SDXL-Turbo-shaped pipeline, a random TAESDXL, sdcpu's int8 conversion (timed, its peak
    RSS measured), and optimum-intel's view of the same graphs (the tiny decoder as its vae_decoder)."""
    from diffusers import AutoencoderTiny

    source, taesd, out = work / "sdxl-diffusers", work / "taesdxl", work / "sdxl-turbo-int8-tiny"
    if not (source / "model_index.json").exists():
        random_pipeline(SDXL, source)
    config = source / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | TURBO_SCHEDULER, indent=2))
    if not (taesd / "config.json").exists():
        AutoencoderTiny().save_pretrained(taesd)  # diffusers' defaults are TAESD's (and TAESDXL's) architecture
    record = work / "convert.json"
    if not (out / "sdcpu.json").exists():
        start = time.perf_counter()
        command = ["sdcpu", "convert", str(source), str(out), "--precision", "int8", "--tiny-vae", str(taesd)]
        subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:], "--force"], check=True)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
        record.write_text(json.dumps({"precision": "int8", "seconds": time.perf_counter() - start, "peak_rss_gb": rss}))
    theirs = work / "optimum-view"
    if not theirs.exists():  # the same IRs, the tiny decoder where optimum-intel looks for the decoder
        shutil.copytree(out, theirs, ignore=shutil.ignore_patterns("vae_decoder", "sdcpu.json"))
        shutil.copytree(out / "tiny_vae_decoder", theirs / "vae_decoder")
    return json.loads(record.read_text())


def run_sdcpu(work: Path, runs: int) -> dict:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    pipe = Pipeline.load(work / "sdxl-turbo-int8-tiny", LoadOptions(decoder="tiny"))
    generate = lambda seed: pipe(PROMPT, steps=STEPS, guidance=0.0, width=SIZE, height=SIZE, seed=seed)  # noqa: E731
    info = generate(0).runtime
    times = []
    for seed in range(1, runs + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "compute": info["compute_precision"], "peak_rss_gb": peak_rss_gb()}


def run_diffusers(work: Path, runs: int) -> dict:
    import torch
    from diffusers import AutoencoderTiny, EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    torch.set_num_threads(2)
    pipe = StableDiffusionXLPipeline.from_pretrained(work / "sdxl-diffusers")
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.vae = AutoencoderTiny.from_pretrained(work / "taesdxl")
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int) -> None:
        with torch.no_grad():
            pipe(
                PROMPT,
                num_inference_steps=STEPS,
                guidance_scale=0.0,
                height=SIZE,
                width=SIZE,
                generator=torch.manual_seed(seed),
            )

    generate(0)
    times = []
    for seed in range(1, runs + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    return {"seconds": times, "compute": "f32 (PyTorch)", "peak_rss_gb": peak_rss_gb()}


def spawn(runner: str, work: Path, runs: int, optimum: str | None) -> dict:
    if runner == "optimum-intel":
        assert optimum is not None
        command = [optimum, "-c", OPTIMUM, str(work / "optimum-view"), str(runs), PROMPT]
    else:
        command = [sys.executable, __file__, "--work", str(work), "--runs", str(runs), "--worker", runner]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{runner} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdxl"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--optimum-intel", help="python of a venv with optimum-intel[openvino]")
    parser.add_argument("--worker", choices=("sdcpu", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sdxl_speed.json")
    args = parser.parse_args()
    if args.worker:
        run = run_sdcpu if args.worker == "sdcpu" else run_diffusers
        print("RESULT " + json.dumps(run(args.work, args.runs)), flush=True)
        return
    converted = prepare(args.work)
    runners = ["sdcpu", "diffusers"] + (["optimum-intel"] if args.optimum_intel else [])
    results: dict[str, list[dict]] = {runner: [] for runner in runners}
    for _ in range(args.rounds):
        for runner in runners:
            results[runner].append(spawn(runner, args.work, args.runs, args.optimum_intel))
            print(runner, results[runner][-1], flush=True)
    rows = {}
    for runner, rounds in results.items():
        seconds = [s for r in rounds for s in r["seconds"]]
        rows[runner] = {"median_s": statistics.median(seconds), "seconds": seconds, "compute": rounds[0]["compute"]}
        rows[runner]["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rounds)
    for runner in runners[1:]:
        rows["sdcpu"][f"ratio_to_{runner}"] = rows["sdcpu"]["median_s"] / rows[runner]["median_s"]
    record = {"case": f"SDXL-Turbo shape, {SIZE}x{SIZE}, {STEPS} step, TAESDXL shape", "convert": converted}
    args.out.write_text(json.dumps(record | {"rows": rows, "machine": machine()}, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
