"""SDXL's speed and memory on the real SDXL architecture (random weights), two cases:

- `turbo`: SDXL-Turbo's case, 512x512, 1 step, guidance off, the tiny decoder (a random AutoencoderTiny of
  TAESDXL's architecture), warm, end to end; sdcpu's int8 folder next to diffusers-PyTorch fp32 and
  optimum-intel's OVStableDiffusionXLPipeline on the same int8 graphs.
- `base`: SDXL base, 1024x1024, guided (5), Euler, int8-hybrid, next to diffusers-PyTorch fp32; sdcpu also
  with `--low-memory`, for its peak RSS.

    python bench/sdxl_speed.py turbo --work /tmp/sdxl --runs 3 [--optimum-intel /tmp/ov/bin/python]
    python bench/sdxl_speed.py base --work /tmp/sdxl --runs 1 --rounds 1 [--steps 20] [--precision int8]

The random pipeline is built from ../shared's SDXL base configs; each case writes its scheduler into the
source before sdcpu converts it, whose time and peak RSS are recorded. Each runner is its own process: it
loads, generates once to warm up, then `--runs` times; runners alternate over `--rounds`, and each row is
the median of all runs, with the runner's peak RSS. Results: docs/sdxl_<case>.json, summarised in
docs/benchmarks.md.
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
from dataclasses import dataclass, field
from pathlib import Path

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, random_pipeline
from sdcpu.bench.timing import timed_images

ROOT = Path(__file__).resolve().parents[1]
SDXL = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-xl-base-1.0"


@dataclass(frozen=True)
class Case:
    size: int
    steps: int
    guidance: float
    convert: tuple[str, ...]  # sdcpu convert's options
    scheduler: dict = field(default_factory=dict)  # over SDXL base's scheduler config
    tiny_decoder: bool = False


CASES = {
    # SDXL-Turbo's scheduler: Euler a over "trailing" timesteps.
    "turbo": Case(
        512,
        1,
        0.0,
        ("--precision", "int8"),
        {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"},
        tiny_decoder=True,
    ),
    # Calibrated at 512 (docs/precisions.md: the ranges hardly depend on the size; a 1024 UNet call costs 4x).
    "base": Case(1024, 20, 5.0, ("--precision", "int8-hybrid", "--calibration-resolution", "512")),
}
OPTIMUM = """
import json, sys, time, torch
from optimum.intel import OVStableDiffusionXLPipeline
pipe = OVStableDiffusionXLPipeline.from_pretrained(sys.argv[1])
run = lambda seed: pipe(sys.argv[3], num_inference_steps=1, guidance_scale=0.0, height=512, width=512,
                        generator=torch.manual_seed(seed))
run(0)
times = []
for seed in range(1, int(sys.argv[2]) + 1):
    start = time.perf_counter(); run(seed); times.append(time.perf_counter() - start)
rss = int(next(r for r in open("/proc/self/status") if r.startswith("VmHWM:")).split()[1]) * 1024 / 1e9
print("RESULT " + json.dumps({"seconds": times, "compute": "OpenVINO default", "peak_rss_gb": rss}))
"""


def folder(work: Path, name: str, case: Case) -> Path:
    return work / f"sdxl-{name}-{case.convert[1]}"  # the case and its precision


def prepare(name: str, case: Case, work: Path) -> dict:
    """The random pipeline with the case's scheduler, a random TAESDXL, sdcpu's conversion (timed, its
    peak RSS measured), and, for `turbo`, optimum-intel's view of the same graphs (the tiny decoder as its
    vae_decoder)."""
    from diffusers import AutoencoderTiny

    source, taesd, out = work / "sdxl-diffusers", work / "taesdxl", folder(work, name, case)
    if not (source / "model_index.json").exists():
        random_pipeline(SDXL, source)
    scheduler = json.loads((SDXL / "scheduler" / "scheduler_config.json").read_text()) | case.scheduler
    (source / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    if case.tiny_decoder and not (taesd / "config.json").exists():
        AutoencoderTiny().save_pretrained(taesd)  # diffusers' defaults are TAESD's (and TAESDXL's) architecture
    record = work / f"convert-{out.name}.json"
    if not (out / "sdcpu.json").exists():
        start = time.perf_counter()
        command = [str(Path(sys.executable).parent / "sdcpu"), "convert", str(source), str(out), *case.convert]
        subprocess.run([*command, *(["--tiny-vae", str(taesd)] if case.tiny_decoder else []), "--force"], check=True)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB on Linux
        seconds = time.perf_counter() - start
        record.write_text(json.dumps({"options": case.convert, "seconds": seconds, "peak_rss_gb": rss}))
    theirs = work / "optimum-view"
    if name == "turbo" and not theirs.exists():  # the same IRs, the tiny decoder where optimum-intel looks for it
        shutil.copytree(out, theirs, ignore=shutil.ignore_patterns("vae_decoder", "sdcpu.json"))
        shutil.copytree(out / "tiny_vae_decoder", theirs / "vae_decoder")
    return json.loads(record.read_text())


def timed(generate, runs: int) -> list[float]:
    # warm: every network loaded and compiled, at the case's size (one step does it)
    return timed_images(generate, runs, warm_up=lambda: generate(0, 1))


def run_sdcpu(name: str, case: Case, work: Path, runs: int, low_memory: bool = False) -> dict:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    options = LoadOptions(decoder="tiny" if case.tiny_decoder else "full", low_memory=low_memory)
    pipe = Pipeline.load(folder(work, name, case), options)
    size = {"width": case.size, "height": case.size}
    compute = []

    def generate(seed: int, steps: int = case.steps) -> None:
        image = pipe(PROMPT, steps=steps, guidance=case.guidance, seed=seed, **size)
        compute.append(image.runtime["compute_precision"])

    return {"seconds": timed(generate, runs), "compute": compute[0], "peak_rss_gb": peak_rss_gb()}


def run_diffusers(name: str, case: Case, work: Path, runs: int) -> dict:
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionXLPipeline
    from diffusers.schedulers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

    torch.set_num_threads(2)
    pipe = StableDiffusionXLPipeline.from_pretrained(work / "sdxl-diffusers", torch_dtype=torch.float32)
    ancestral = "Ancestral" in case.scheduler.get("_class_name", "")
    euler = EulerAncestralDiscreteScheduler if ancestral else EulerDiscreteScheduler
    pipe.scheduler = euler.from_config(pipe.scheduler.config)
    if case.tiny_decoder:
        pipe.vae = AutoencoderTiny.from_pretrained(work / "taesdxl")
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int, steps: int = case.steps) -> None:
        with torch.no_grad():
            pipe(
                PROMPT,
                num_inference_steps=steps,
                guidance_scale=case.guidance,
                height=case.size,
                width=case.size,
                generator=torch.manual_seed(seed),
            )

    return {"seconds": timed(generate, runs), "compute": "f32 (PyTorch)", "peak_rss_gb": peak_rss_gb()}


def spawn(runner: str, args: argparse.Namespace) -> dict:
    if runner == "optimum-intel":
        command = [args.optimum_intel, "-c", OPTIMUM, str(args.work / "optimum-view"), str(args.runs), PROMPT]
    else:
        command = [sys.executable, __file__, args.case, "--work", str(args.work), "--runs", str(args.runs)]
        command += ["--steps", str(args.steps)] if args.steps else []
        command += ["--precision", args.precision] if args.precision else []
        command += ["--worker", runner]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{runner} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def worker(runner: str, name: str, case: Case, work: Path, runs: int) -> dict:
    if runner == "diffusers":
        return run_diffusers(name, case, work, runs)
    return run_sdcpu(name, case, work, runs, low_memory=runner == "sdcpu --low-memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdxl"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, help="override the case's step count (recorded)")
    parser.add_argument("--precision", help="override the case's precision (recorded; its own folder)")
    parser.add_argument("--optimum-intel", help="turbo: python of a venv with optimum-intel[openvino]")
    parser.add_argument("--worker", choices=("sdcpu", "sdcpu --low-memory", "diffusers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    case = CASES[args.case]
    if args.steps or args.precision:
        convert = ("--precision", args.precision) if args.precision else case.convert
        case = Case(case.size, args.steps or case.steps, case.guidance, convert, case.scheduler, case.tiny_decoder)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.case, case, args.work, args.runs)), flush=True)
        return
    converted = prepare(args.case, case, args.work)
    runners = ["sdcpu", "diffusers"]
    runners += ["optimum-intel"] if args.optimum_intel and args.case == "turbo" else []
    runners += ["sdcpu --low-memory"] if args.case == "base" else []
    results: dict[str, list[dict]] = {runner: [] for runner in runners}
    # "Warm" as a user's second run is: OpenVINO's compiled networks are cached on disk by the first
    # process that loads a folder, whose compile peaks higher (docs/benchmarks.md gives both).
    # --low-memory's networks have other shapes (batch-1 guidance, decoder tiles): other blobs, primed too.
    first = {r: spawn(r, argparse.Namespace(**vars(args) | {"runs": 0})) for r in runners if r.startswith("sdcpu")}
    print("sdcpu's first loads, which fill the cache:", first, flush=True)
    for _ in range(args.rounds):
        for runner in runners:
            results[runner].append(spawn(runner, args))
            print(runner, results[runner][-1], flush=True)
    rows = {}
    for runner, rounds in results.items():
        seconds = [s for r in rounds for s in r["seconds"]]
        rows[runner] = {"median_s": statistics.median(seconds), "seconds": seconds, "compute": rounds[0]["compute"]}
        rows[runner]["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rounds)
    for runner in runners[1:]:
        rows["sdcpu"][f"ratio_to_{runner}"] = rows["sdcpu"]["median_s"] / rows[runner]["median_s"]
    shape = f"{case.size}x{case.size}, {case.steps} step(s), guidance {case.guidance}"
    record = {"case": f"{args.case}: {shape}", "convert": converted, "rows": rows, "machine": machine()}
    record["first_load_peak_rss_gb"] = {runner: result["peak_rss_gb"] for runner, result in first.items()}
    (ROOT / "docs" / f"sdxl_{args.case}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
