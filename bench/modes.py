"""Benchmarks of the edit modes on the real architectures with random weights (docs/modes.md).

    python bench/modes.py --work /tmp/sdcpu-modes upscale-128     # x4: 128 -> 512, sdcpu and diffusers-PyTorch
    python bench/modes.py --work /tmp/sdcpu-modes upscale-512     # x4: 512 -> 2048, tiled, sdcpu
    python bench/modes.py --work /tmp/sdcpu-modes inpaint         # SD inpainting's 9-channel UNet against SD 1.4's
    python bench/modes.py --work /tmp/sdcpu-modes depth           # SD 2 depth at 512, with its DPT

Each pipeline is built from `../shared/reference-configs` with random weights, converted once (OpenVINO,
fp32 weights), and run in its own process, so that its peak RSS is its own; runners of one benchmark
alternate round by round. Results are appended to docs/modes.json with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, random_pipeline
from sdcpu.runtime.tasks.depth2img import estimate_depth

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference-configs"
SOURCES = {
    "x4": "stable-diffusion-x4-upscaler",
    "inpainting": "stable-diffusion-inpainting",
    "sd14": "stable-diffusion-v1-4",
    "depth": "stable-diffusion-2-depth",
}


def prepare(work: Path, name: str) -> Path:
    from sdcpu.export.convert import convert

    source, converted = work / f"{name}-diffusers", work / f"{name}-openvino"
    if not (source / "model_index.json").exists():
        random_pipeline(REFERENCE / SOURCES[name], source)
    if not (converted / "sdcpu.json").exists():
        convert(str(source), converted, "openvino", "fp32", force=True)
    return converted


def low_res(size: int) -> object:
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


class Steps:
    """A step callback that records when each step ended."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def __call__(self, done, total, latents):
        self.times.append(time.perf_counter())

    def report(self) -> dict:
        steps = np.diff(self.times)
        return {"step_s": float(statistics.median(steps[1:] if len(steps) > 1 else steps)), "steps": len(steps)}


def run_sdcpu(job: str, work: Path, steps: int, low_memory: bool = False) -> dict:
    from PIL import Image

    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    folders = {"upscale-128": "x4", "upscale-512": "x4", "inpaint": "inpainting", "sd14-txt2img": "sd14"}
    folder = work / (folders | {"sd14-blend": "sd14"}).get(job, job)
    start = time.perf_counter()
    pipe = Pipeline.load(f"{folder}-openvino", LoadOptions(low_memory=low_memory))
    loaded, timer = time.perf_counter() - start, Steps()
    if job.startswith("upscale"):
        size = int(job.split("-")[1])
        result = pipe.upscale(low_res(size), PROMPT, steps=steps, seed=1, callback=timer)
    elif job == "depth":
        dpt_start = time.perf_counter()
        estimate_depth(pipe, low_res(512))  # the DPT alone, timed apart
        dpt = time.perf_counter() - dpt_start
        result = pipe.depth2img(PROMPT, low_res(512), steps=steps, seed=1, callback=timer)
    elif job == "sd14-txt2img":
        result = pipe(PROMPT, steps=steps, seed=1, callback=timer)
    else:  # inpaint (a 9-channel UNet) or sd14-blend (latent blending), 512x512, the left half masked
        mask = Image.new("L", (512, 512), 0)
        mask.paste(255, (0, 0, 256, 512))
        result = pipe.inpaint(PROMPT, low_res(512), mask, steps=steps, seed=1, callback=timer)
    total = time.perf_counter() - start - loaded
    report = timer.report() | {"load_s": loaded, "end_to_end_s": total, "peak_rss_gb": peak_rss_gb()}
    report |= {"dpt_s": dpt} if job == "depth" else {}
    report |= {"memory": result.runtime["memory"], "tiles": pipe_tiles(result)}
    return report | {"compute": result.runtime["compute_precision"], "size": list(result.images[0].size)}


def pipe_tiles(result) -> str:
    from sdcpu.runtime.components.tiling import even_tiles

    up = result.settings.upscale
    if up is None:
        return ""
    (h, rows), (w, cols) = (
        even_tiles(n // 4, up.tile, up.tile_overlap) for n in (result.settings.height, result.settings.width)
    )
    return f"{len(rows)}x{len(cols)} tiles of {h}x{w} latents"


def run_diffusers(job: str, work: Path, steps: int, low_memory: bool = False) -> dict:
    import torch
    from diffusers import StableDiffusionUpscalePipeline

    torch.set_num_threads(2)
    start = time.perf_counter()
    pipe = StableDiffusionUpscalePipeline.from_pretrained(work / "x4-diffusers")
    pipe.set_progress_bar_config(disable=True)
    loaded, timer = time.perf_counter() - start, Steps()
    size = int(job.split("-")[1])
    with torch.no_grad():
        step = lambda i, t, latents: timer(i, steps, latents)  # noqa: E731
        image = pipe(PROMPT, image=low_res(size), num_inference_steps=steps, callback=step, callback_steps=1).images[0]
    total = time.perf_counter() - start - loaded
    report = timer.report() | {"load_s": loaded, "end_to_end_s": total, "peak_rss_gb": peak_rss_gb()}
    return report | {"compute": "f32 (PyTorch)", "size": list(image.size)}


def spawn(runner: str, job: str, work: Path, steps: int, low_memory: bool) -> dict:
    command = [sys.executable, __file__, "--work", str(work), "--steps", str(steps), "--worker", runner, job]
    command += ["--low-memory"] if low_memory else []
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{runner} {job} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=("upscale-128", "upscale-512", "inpaint", "depth", "sd14-txt2img", "sd14-blend"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-modes"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--low-memory", action="store_true", help="sdcpu's --low-memory policy")
    parser.add_argument("--worker", choices=("sdcpu", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "modes.json")
    args = parser.parse_args()
    if args.worker:
        run = run_sdcpu if args.worker == "sdcpu" else run_diffusers
        print("RESULT " + json.dumps(run(args.job, args.work, args.steps, args.low_memory)), flush=True)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    names = {"upscale-128": ["x4"], "upscale-512": ["x4"], "inpaint": ["inpainting", "sd14"], "depth": ["depth"]}
    for name in names[args.job]:
        prepare(args.work, name)
    runners = {"upscale-128": [("sdcpu", "upscale-128"), ("diffusers", "upscale-128")]}.get(args.job)
    inpainting = [("sdcpu", "inpaint"), ("sdcpu", "sd14-txt2img"), ("sdcpu", "sd14-blend")]
    runners = runners or (inpainting if args.job == "inpaint" else [("sdcpu", args.job)])
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for runner, job in runners:
            runs.setdefault(f"{runner} {job}", []).append(spawn(runner, job, args.work, args.steps, args.low_memory))
            print(runner, job, runs[f"{runner} {job}"][-1], flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    key = args.job + (" low-memory" if args.low_memory else "")
    results[key] = {"machine": machine(), "steps": args.steps, "rounds": args.rounds, "runs": runs}
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
