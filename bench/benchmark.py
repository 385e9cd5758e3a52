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
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
PROMPT = "a photograph of an astronaut riding a horse"
RUNNERS = ("pytorch", "sdcpu-openvino", "sdcpu-onnxruntime")


def build_random_pipeline(folder: Path) -> None:
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    for name, make in (
        ("unet", lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(REFERENCE / "unet"))),
        ("vae", lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(REFERENCE / "vae"))),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(REFERENCE / "text_encoder"))),
    ):
        make().save_pretrained(folder / name)
    for name in ("tokenizer", "scheduler"):
        shutil.copytree(REFERENCE / name, folder / name)
    index = json.loads((REFERENCE / "model_index.json").read_text())
    # No safety checker weights are written: say so, as diffusers does, so that every loader accepts the folder.
    index |= {"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


class Timer:
    """Wraps a callable and records the wall time of every call."""

    def __init__(self, fn):
        self.fn, self.times = fn, []

    def __call__(self, *args, **kwargs):
        return self._timed(self.fn, args, kwargs)

    def outputs(self, **inputs):  # an sdcpu model's every output
        return self._timed(self.fn.outputs, (), inputs)

    def release_memory(self):  # an sdcpu model's buffers, freed between phases
        self.fn.release_memory()

    @property
    def compute_precision(self):  # what an sdcpu model computed in
        return getattr(self.fn, "compute_precision", None)

    def _timed(self, fn, args, kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.times.append(time.perf_counter() - start)
        return out


def run_sdcpu(
    model: Path,
    backend: str,
    steps: int,
    deep_cache: int = 1,
    winograd: bool = True,
    token_downsampling: int = 1,
    compute_precision: str = "f32",
    int8_activations: bool = False,
) -> dict:
    start = time.perf_counter()
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    options = LoadOptions(
        backend=backend,
        winograd=winograd,
        token_downsampling=token_downsampling,
        compute_precision=compute_precision,
        int8_activations=int8_activations,
    )
    pipe = Pipeline.load(model, options)
    load = time.perf_counter() - start
    pipe.text_encoder, pipe.unet, pipe.vae_decoder = (
        Timer(m) for m in (pipe.text_encoder, pipe.unet, pipe.vae_decoder)
    )
    pipe.unet_shallow = shallow = Timer(pipe.unet_shallow)
    start = time.perf_counter()
    pipe(PROMPT, steps=steps, seed=0, scheduler="euler", width=512, height=512, deep_cache=deep_cache)
    total = time.perf_counter() - start
    report = _report(load, total, pipe.text_encoder.times, pipe.unet.times, pipe.vae_decoder.times)
    report["compute_precision"] = pipe.runtime_info()["compute_precision"]
    if shallow.times:  # DeepCache: the shallow steps, and all UNet time spent
        report["unet_shallow_step_s"] = statistics.median(shallow.times[1:] or shallow.times)
        report["unet_total_s"] = sum(pipe.unet.times) + sum(shallow.times)
    return report


def run_pytorch(model: Path, steps: int, bf16: bool = False) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        model, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    text, unet, vae = Timer(pipe.text_encoder.forward), Timer(pipe.unet.forward), Timer(pipe.vae.decode)
    pipe.text_encoder.forward, pipe.unet.forward, pipe.vae.decode = text, unet, vae
    start = time.perf_counter()
    # bf16: PyTorch's CPU autocast, which runs matmuls and convolutions in bf16 (oneDNN) and keeps the rest fp32.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), height=512, width=512)
    total = time.perf_counter() - start
    return _report(load, total, text.times, unet.times, vae.times)


def peak_rss_gb() -> float:
    # VmHWM (KiB), not getrusage's ru_maxrss: that survives exec, so a worker would inherit its parent's
    # peak. In GB (10^9 bytes), as folder sizes.
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e9


def _report(load: float, total: float, text: list, unet: list, vae: list) -> dict:
    steady = unet[1:] if len(unet) > 1 else unet  # the first call may include compilation
    return {
        "load_s": load,
        "end_to_end_s": total,
        "text_encoder_s": sum(text),
        "unet_step_s": statistics.median(steady),
        "unet_first_step_s": unet[0],
        "vae_decode_s": sum(vae),
        "peak_rss_gb": peak_rss_gb(),
    }


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
        build_random_pipeline(work / "diffusers")
    for fmt in ("openvino", "onnx"):
        if not (work / fmt / "sdcpu.json").exists():
            start = time.perf_counter()
            convert(str(work / "diffusers"), work / fmt, fmt, "fp32", force=True)
            times[fmt] = time.perf_counter() - start
    return times


def machine() -> str:
    """The CPU by model, generation (family / model) and the ISA that decides speed, with the RAM and OS."""

    from sdcpu.runtime.precision import cpu_info

    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{cpu_info().describe()}, {mem:.0f} GB RAM, {platform.system()} {platform.release()}"


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
        "machine": machine(),
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
