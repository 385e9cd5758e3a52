"""sdcpu against its peers on the real SD 1.5 architecture (random weights), in one run, alternating.

Runners: diffusers + PyTorch fp32; optimum-intel's OVStableDiffusionPipeline fp32 and int8 (static
512x512 shapes, as its docs advise); sdcpu on OpenVINO at fp32, int8, int8-hybrid and int4, and on
ONNX Runtime at fp32 and int8. Every run is a fresh process (its peak RSS is its own), runners alternate
round by round (A B C ... A B C ...), medians over rounds. Results: docs/peers.json, a chart
docs/peers.png (with matplotlib) and the table printed for docs/benchmarks.md.

    python bench/compare_peers.py --work /tmp/sd15 --steps 20 --runs 3 --peer-python /path/to/python

`--peer-python`: an interpreter with optimum-intel and diffusers (default: this one); optimum-intel
pins its own transformers, so it usually lives in its own virtual environment. `--work` holds the
random-weight diffusers folder and every export; missing ones are made first (not timed).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line
from sdcpu.bench.peers import PROMPT, random_pipeline, report, run_pytorch, run_sdcpu
from sdcpu.bench.timing import Timed

ROOT = Path(__file__).resolve().parents[1]
# SD 1.4 and 1.5 share the architecture
REFERENCE = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
# Every sdcpu runner computes in f32 unless its name says "bf16 compute"; optimum-intel runs at OpenVINO's
# default, which is bf16 on CPUs with native bf16.
# name -> (kind, folder under --work, precision); sdcpu runners named "... + DeepCache N" reuse the
# UNet's deep features for N-1 of every N steps, "... + ToDo F" downsample the keys and values of the
# highest-resolution self-attention by F (both opt-in, approximate; their quality is in docs/quality.md);
# "direct convolutions" turns Winograd's off (as --low-memory does).
RUNNERS = {
    "diffusers + PyTorch fp32": ("pytorch", "diffusers", "fp32"),
    "diffusers + PyTorch bf16 autocast": ("pytorch", "diffusers", "bf16"),
    "optimum-intel fp32": ("optimum", "optimum-fp32", "fp32"),
    "optimum-intel int8": ("optimum", "optimum-int8", "int8"),
    "sdcpu OpenVINO fp32": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO fp32 (direct convolutions)": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO int8": ("openvino", "openvino-int8", "int8"),
    "sdcpu OpenVINO int8-hybrid": ("openvino", "openvino-int8-hybrid", "int8-hybrid"),
    "sdcpu OpenVINO int4": ("openvino", "openvino-int4", "int4"),
    "sdcpu ONNX Runtime fp32": ("onnxruntime", "onnx-fp32", "fp32"),
    "sdcpu ONNX Runtime int8": ("onnxruntime", "onnx-int8", "int8"),
    "sdcpu OpenVINO fp32 + DeepCache 2": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO int8-hybrid + DeepCache 2": ("openvino", "openvino-int8-hybrid", "int8-hybrid"),
    "sdcpu OpenVINO fp32 + ToDo 2": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO fp32 + DeepCache 2 + ToDo 2": ("openvino", "openvino-fp32", "fp32"),
    # bf16 compute (CPUs with native bf16): the same folders, OpenVINO's INFERENCE_PRECISION_HINT set to bf16
    "sdcpu OpenVINO fp32, bf16 compute": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO fp32 (direct convolutions), bf16 compute": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO int8, bf16 compute": ("openvino", "openvino-int8", "int8"),
    "sdcpu OpenVINO int8-hybrid, bf16 compute": ("openvino", "openvino-int8-hybrid", "int8-hybrid"),
    "sdcpu OpenVINO int8-hybrid + DeepCache 2, bf16 compute": ("openvino", "openvino-int8-hybrid", "int8-hybrid"),
    "sdcpu OpenVINO fp32 + DeepCache 2, bf16 compute": ("openvino", "openvino-fp32", "fp32"),
    "sdcpu OpenVINO fp32 (direct convolutions) + DeepCache 2, bf16 compute": ("openvino", "openvino-fp32", "fp32"),
    # int8 activations: MatMuls with int8 weights quantize their activations on the fly (OpenVINO's dynamic
    # quantization), so they run as int8 dot products (VNNI)
    "sdcpu OpenVINO int8 + int8 activations": ("openvino", "openvino-int8", "int8"),
    "sdcpu OpenVINO int8-hybrid + int8 activations": ("openvino", "openvino-int8-hybrid", "int8-hybrid"),
    "sdcpu OpenVINO int8-hybrid + int8 activations, bf16 compute": (
        "openvino",
        "openvino-int8-hybrid",
        "int8-hybrid",
    ),
    "sdcpu OpenVINO int8-hybrid + int8 activations + DeepCache 2, bf16 compute": (
        "openvino",
        "openvino-int8-hybrid",
        "int8-hybrid",
    ),
}


def run_optimum(folder: Path, steps: int) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    start = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(folder, compile=False)
    pipe.reshape(batch_size=1, height=512, width=512, num_images_per_prompt=1)
    pipe.compile()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    text, unet, vae = Timed(pipe.text_encoder.forward), Timed(pipe.unet.forward), Timed(pipe.vae_decoder.forward)
    pipe.text_encoder.forward, pipe.unet.forward, pipe.vae_decoder.forward = text, unet, vae
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), height=512, width=512)
    total = time.perf_counter() - start
    return report(load, total, text.seconds, unet.seconds, vae.seconds)


def _option(name: str, option: str) -> int:
    return int(name.split(f"{option} ", 1)[1].split()[0].rstrip(",")) if option in name else 1


def deep_cache(name: str) -> int:
    return _option(name, "DeepCache")


def worker(name: str, work: Path, steps: int) -> None:
    kind, folder, _ = RUNNERS[name]
    if kind == "pytorch":
        result = run_pytorch(work / folder, steps, bf16="bf16" in name)
    elif kind == "optimum":
        result = run_optimum(work / folder, steps)
    else:
        winograd, factor = "direct" not in name, _option(name, "ToDo")
        compute = "bf16" if "bf16 compute" in name else "f32"
        int8 = "int8 activations" in name
        result = run_sdcpu(work / folder, kind, steps, deep_cache(name), winograd, factor, compute, int8)
    print("RESULT " + json.dumps(result), flush=True)


def prepare(work: Path, names: list[str], peer_python: str) -> None:
    if not (work / "diffusers" / "unet").exists():
        random_pipeline(REFERENCE, work / "diffusers")
    for name in names:
        kind, folder, precision = RUNNERS[name]
        if kind == "pytorch" or (work / folder).exists():
            continue
        print(f"preparing {folder}", flush=True)
        if kind == "optimum":
            cli = [peer_python, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--task", "text-to-image"]
            subprocess.run([*cli, "--model", str(work / "diffusers"), "--weight-format", precision, str(work / folder)])
        else:
            from sdcpu.export.convert import convert

            convert(str(work / "diffusers"), work / folder, "onnx" if kind == "onnxruntime" else "openvino", precision)


def run_round(names: list[str], work: Path, steps: int, peer_python: str) -> dict[str, dict]:
    results = {}
    for name in names:
        python = peer_python if RUNNERS[name][0] in ("pytorch", "optimum") else sys.executable
        cmd = [python, __file__, "--worker", name, "--work", str(work), "--steps", str(steps)]
        env = {**os.environ, "SDCPU_CACHE_DIR": str(work / "compile-cache")}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if "RESULT " not in out.stdout:
            raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
        results[name] = json.loads(out.stdout.split("RESULT ", 1)[1])
        print(f"{name}: {results[name]}", flush=True)
    return results


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    summary = {}
    for name, rounds in runs.items():
        median = {
            key: statistics.median(r[key] for r in rounds) if isinstance(value, float) else value
            for key, value in rounds[0].items()
        }
        # 20 steps from the measured parts: text encoder, first step, 19 further steps, decode. With
        # DeepCache N, ceil(20 / N) of the 20 steps run the whole UNet and the rest the shallow pass.
        full = math.ceil(20 / deep_cache(name))
        unet = (full - 1) * median["unet_step_s"] + (20 - full) * median.get("unet_shallow_step_s", 0.0)
        median["estimated_20_steps_s"] = (
            median["text_encoder_s"] + median["unet_first_step_s"] + unet + median["vae_decode_s"]
        )
        median["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rounds)
        # Start-up: load plus what the first step costs beyond a steady one (compiling, or importing a
        # cached compile). Round 1 starts cold; later rounds find sdcpu's compile cache warm.
        startup = [r["load_s"] + r["unet_first_step_s"] - r["unet_step_s"] for r in rounds]
        median["startup_cold_s"], median["startup_warm_s"] = startup[0], statistics.median(startup[1:] or startup)
        summary[name] = median
    return summary


def table(summary: dict[str, dict], sizes: dict[str, float], flops: dict | None) -> str:
    base = summary.get("sdcpu OpenVINO fp32")
    torch_e2e = summary.get("diffusers + PyTorch fp32", {}).get("estimated_20_steps_s")
    columns = [
        "UNet step",
        "vs sdcpu fp32",
        "start cold / warm",
        "VAE decode",
        "20 steps (est.)",
        "vs PyTorch",
        "peak RSS",
    ]
    lines = ["| | " + " | ".join(columns) + " | folder |", "|---|" + "---:|" * 8]
    for name, m in summary.items():
        ratio = f"{m['unet_step_s'] / base['unet_step_s']:.2f}x" if base else ""
        vs_torch = f"{m['estimated_20_steps_s'] / torch_e2e:.2f}x" if torch_e2e else ""
        step = f"{m['unet_step_s']:.2f} s" + (
            f" (shallow {m['unet_shallow_step_s']:.2f} s)" if deep_cache(name) > 1 else ""
        )
        lines.append(
            f"| {name} | {step} | {ratio} | {m['startup_cold_s']:.1f} / {m['startup_warm_s']:.1f} s"
            f" | {m['vae_decode_s']:.1f} s | {m['estimated_20_steps_s']:.0f} s | {vs_torch}"
            f" | {m['peak_rss_gb']:.2f} GB | {sizes[name]:.2f} GB |"
        )
    if flops:
        lines += ["", "| | GFLOP/s per UNet step | of the 157 GFLOP/s fp32 peak |", "|---|---:|---:|"]
        for name, m in summary.items():
            if deep_cache(name) > 1:
                continue  # the shallow steps skip work: a FLOP rate per step would not compare
            rate = flops["unet_step_gflop"] / m["unet_step_s"]
            lines.append(f"| {name} | {rate:.0f} | {100 * rate / flops['peak_gflops']:.0f}% |")
    return "\n".join(lines)


def chart(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.5), sharey=True)
    colours = ["#c44" if not n.startswith("sdcpu") else "#2a7" for n in names]
    left.barh(names, [summary[n]["estimated_20_steps_s"] for n in names], color=colours)
    left.set_xlabel("seconds for a 20-step 512x512 image (lower is better)")
    right.barh(names, [summary[n]["peak_rss_gb"] for n in names], color=colours)
    right.set_xlabel("peak RSS, GB (lower is better)")
    left.invert_yaxis()
    fig.suptitle("SD 1.5 architecture on the CPU, same machine, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def folder_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "compile-cache" not in f.parts) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sd15"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="rounds; every runner runs once per round")
    parser.add_argument("--runners", default=";".join(RUNNERS), help="names from the list above, separated by ;")
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--flops", type=Path, help="JSON from bench/flops.py, for GFLOP/s")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "peers.json")
    parser.add_argument("--from-log", type=Path, help="summarise the per-run lines a run printed (no new runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work, args.steps)
    names = args.runners.split(";")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    if args.from_log:
        for line in args.from_log.read_text().splitlines():
            name, _, result = line.partition(": {")
            if name in runs:
                runs[name].append(ast.literal_eval("{" + result))
    else:
        prepare(args.work, names, args.peer_python)
        for i in range(args.runs):
            print(f"round {i + 1}/{args.runs}", flush=True)
            for name, result in run_round(names, args.work, args.steps, args.peer_python).items():
                runs[name].append(result)
    summary = summarise(runs)
    sizes = {name: folder_gb(args.work / RUNNERS[name][1]) for name in names}
    flops = json.loads(args.flops.read_text()) if args.flops else None
    record = {"machine": machine_line(), "steps": args.steps, "runs": args.runs, "median": summary, "all": runs}
    args.out.write_text(json.dumps({**record, "folder_gb": sizes, "flops": flops}, indent=2) + "\n")
    print(table(summary, sizes, flops))
    try:
        chart(summary, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)


if __name__ == "__main__":
    main()
