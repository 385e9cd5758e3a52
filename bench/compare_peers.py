"""sdcpu against its peers on the real SD 1.5 architecture (random weights), in one run, alternating.

Runners (bench/peer_runners.py for the peers):
- diffusers + PyTorch at fp32 and bf16 autocast;
- optimum-intel's OVStableDiffusionPipeline at fp32, int8 (weight-only) and NNCF's hybrid int8, calibrated
  on as many UNet calls as sdcpu's int8-hybrid (static 512x512 shapes, as its docs advise);
- openvino.genai's Text2ImagePipeline on sdcpu's folders and on optimum-intel's exports;
- stable-diffusion.cpp (stable-diffusion-cpp-python) at f16, q8_0 and q4_0, from a single-file checkpoint
  of the same random weights in the original (LDM) layout;
- sdcpu on OpenVINO at fp32, int8, int8-hybrid and int4, and on ONNX Runtime at fp32 and int8.

The same weights, prompt, guidance, Euler scheduler, steps and size everywhere. Every run is a fresh
process (its peak RSS is its own), runners alternate round by round (A B C ... A B C ...), medians over
rounds. Results: docs/peers.json, a chart docs/peers.png (with matplotlib) and the table printed for
docs/benchmarks.md.

    python bench/compare_peers.py --work /tmp/sd15 --steps 20 --runs 3 \\
        --optimum-python /tmp/ov/bin/python --sdcpp-python /tmp/sdcpp/bin/python --limit docs/limit.json

The peers live in their own virtual environments, as their pins clash with sdcpu's:
    python -m venv /tmp/ov && /tmp/ov/bin/pip install torch==2.13.0 && \\
        /tmp/ov/bin/pip install "optimum-intel[openvino]" diffusers nncf openvino-genai==<sdcpu's OpenVINO>
    python -m venv /tmp/sdcpp && /tmp/sdcpp/bin/pip install stable-diffusion-cpp-python pillow
`--optimum-python` runs optimum-intel and (unless `--genai-python` is given) openvino.genai. `--work`
holds the random-weight diffusers folder and every export; missing ones are made first (not timed).
`--limit`: bench/limit.py's JSON, for each row's FLOP rate as a fraction of this CPU's limit.
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
from pathlib import Path

from sdcpu.bench.machine import machine_line
from sdcpu.bench.peers import random_pipeline, run_pytorch, run_sdcpu

ROOT = Path(__file__).resolve().parents[1]
# SD 1.4 and 1.5 share the architecture
REFERENCE = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
# Every sdcpu runner computes in f32 unless its name says "bf16 compute"; optimum-intel runs at OpenVINO's
# default, which is bf16 on CPUs with native bf16.
# name -> (kind, folder under --work, precision); sdcpu runners named "... + DeepCache N" reuse the
# UNet's deep features for N-1 of every N steps, "... + ToDo F" downsample the keys and values of the
# highest-resolution self-attention by F (both opt-in, approximate; their quality is in docs/quality.md);
# "direct convolutions" turns Winograd's off (as --low-memory does).
SINGLE_FILE = "sd15.safetensors"  # the sdcpp folder's checkpoint
RUNNERS = {
    "diffusers + PyTorch fp32": ("pytorch", "diffusers", "fp32"),
    "diffusers + PyTorch bf16 autocast": ("pytorch", "diffusers", "bf16"),
    "optimum-intel fp32": ("optimum", "optimum-fp32", "fp32"),
    "optimum-intel int8": ("optimum", "optimum-int8", "int8"),
    "optimum-intel int8-hybrid": ("optimum", "optimum-int8-hybrid", "int8-hybrid"),
    "openvino.genai on sdcpu's fp32 folder": ("genai", "openvino-fp32", "fp32"),
    "openvino.genai on sdcpu's int8-hybrid folder": ("genai", "openvino-int8-hybrid", "int8-hybrid"),
    "openvino.genai on optimum-intel's fp32 export": ("genai", "optimum-fp32", "fp32"),
    "openvino.genai on optimum-intel's int8-hybrid export": ("genai", "optimum-int8-hybrid", "int8-hybrid"),
    "stable-diffusion.cpp f16": ("sdcpp", "sdcpp", "f16"),
    "stable-diffusion.cpp q8_0": ("sdcpp", "sdcpp", "q8_0"),
    "stable-diffusion.cpp q4_0": ("sdcpp", "sdcpp", "q4_0"),
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


def _option(name: str, option: str) -> int:
    return int(name.split(f"{option} ", 1)[1].split()[0].rstrip(",")) if option in name else 1


def deep_cache(name: str) -> int:
    return _option(name, "DeepCache")


def worker(name: str, work: Path, steps: int) -> None:
    kind, folder, precision = RUNNERS[name]
    if kind == "pytorch":
        result = run_pytorch(work / folder, steps, bf16="bf16" in name)
    elif kind in ("optimum", "genai", "sdcpp"):
        import peer_runners

        if kind == "optimum":
            result = peer_runners.run_optimum(work / folder, steps)
        elif kind == "genai":
            result = peer_runners.run_genai(work / folder, steps)
        else:
            result = peer_runners.run_sdcpp(work / folder / SINGLE_FILE, steps, precision)
    else:
        winograd, factor = "direct" not in name, _option(name, "ToDo")
        compute = "bf16" if "bf16 compute" in name else "f32"
        int8 = "int8 activations" in name
        result = run_sdcpu(work / folder, kind, steps, deep_cache(name), winograd, factor, compute, int8)
    print("RESULT " + json.dumps(result), flush=True)


def single_file(diffusers: Path, out: Path) -> None:
    """The random weights as one .safetensors in the original (LDM) layout, for stable-diffusion.cpp."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    sys.path.insert(0, str(ROOT / "tests"))
    from ldm_checkpoint import sd1_checkpoint

    models = (
        CLIPTextModel.from_pretrained(diffusers / "text_encoder"),
        UNet2DConditionModel.from_pretrained(diffusers / "unet"),
        AutoencoderKL.from_pretrained(diffusers / "vae"),
    )
    # The original layout names the text encoder's weights text_model.*, as transformers 4 did (5 drops it)
    prefix, full = "cond_stage_model.transformer.", "cond_stage_model.transformer.text_model."
    state = {
        full + key.removeprefix(prefix) if key.startswith(prefix) and not key.startswith(full) else key: value
        for key, value in sd1_checkpoint(*models).items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out)


def prepare(work: Path, names: list[str], pythons: dict[str, str]) -> None:
    if not (work / "diffusers" / "unet").exists():
        random_pipeline(REFERENCE, work / "diffusers")
    for name in names:
        kind, folder, precision = RUNNERS[name]
        if kind in ("pytorch", "genai") or (work / folder).exists():
            continue  # genai runs the folders of other runners, made for them
        print(f"preparing {folder}", flush=True)
        if kind == "optimum":
            from peer_runners import export_optimum_in

            from sdcpu.export.calibration import CalibrationSettings

            calibration = CalibrationSettings()  # sdcpu's int8-hybrid defaults: as many UNet calls, same prompts
            args = (work / "diffusers", work / folder, precision, calibration.size, list(calibration.prompts))
            if export_optimum_in(pythons["optimum"], *args) != 0:
                raise SystemExit(f"optimum-intel could not export {folder}")
        elif kind == "sdcpp":
            single_file(work / "diffusers", work / folder / SINGLE_FILE)
        else:
            from sdcpu.export.convert import convert

            convert(str(work / "diffusers"), work / folder, "onnx" if kind == "onnxruntime" else "openvino", precision)


def run_round(names: list[str], work: Path, steps: dict[str, int], pythons: dict[str, str]) -> dict[str, dict]:
    """Every runner once, in order; `steps` per kind of runner (default: steps["*"])."""
    results = {}
    for name in names:
        kind = RUNNERS[name][0]
        python = pythons.get(kind, sys.executable)
        count = steps.get(kind, steps["*"])
        cmd = [python, __file__, "--worker", name, "--work", str(work), "--steps", str(count)]
        from peer_runners import peer_env

        env = {**(peer_env() if kind in pythons else os.environ), "SDCPU_CACHE_DIR": str(work / "compile-cache")}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if "RESULT " in out.stdout:
            results[name] = json.loads(out.stdout.split("RESULT ", 1)[1]) | {"steps": count}
        else:  # a runner that cannot run gets a row that says why
            lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
            results[name] = {"error": lines[-1]}
        print(f"{name}: {results[name]}", flush=True)
    return results


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for name, tried in runs.items():
        rounds = [r for r in tried if "error" not in r]
        if not rounds:
            summary[name] = {"error": tried[0]["error"] if tried else "not run"}
            continue
        median = {
            key: statistics.median(r[key] for r in rounds) if isinstance(value, float) else value
            for key, value in rounds[0].items()
        }
        # 20 steps from the measured parts, once started: text encoder, 20 steady steps, decode. What the
        # first step costs beyond a steady one (sdcpu compiles at its first call, the peers in their load)
        # is start-up, below. With DeepCache N, ceil(20 / N) of the 20 steps run the whole UNet and the
        # rest the shallow pass.
        full = math.ceil(20 / deep_cache(name))
        unet = full * median["unet_step_s"] + (20 - full) * median.get("unet_shallow_step_s", 0.0)
        median["estimated_20_steps_s"] = median["text_encoder_s"] + unet + median["vae_decode_s"]
        median["peak_rss_gb"] = max(r["peak_rss_gb"] for r in rounds)
        # Start-up: load plus what the first step costs beyond a steady one (compiling, or importing a
        # cached compile). Round 1 starts cold; later rounds find sdcpu's compile cache warm.
        startup = [r["load_s"] + r["unet_first_step_s"] - r["unet_step_s"] for r in rounds]
        median["startup_cold_s"], median["startup_warm_s"] = startup[0], statistics.median(startup[1:] or startup)
        summary[name] = median
    return summary


def table(summary: dict[str, dict], sizes: dict[str, float], flops: dict | None, limit: dict | None) -> str:
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
        if "error" in m:
            lines.append(f"| {name} | could not run: {m['error']} |" + " |" * 7)
            continue
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
    if flops and limit:
        lines += ["", "| | GFLOP/s per UNet step | limit used | of the limit |", "|---|---:|---|---:|"]
        native_bf16 = "bf16" in limit["limit_gflops"]
        for name, m in summary.items():
            if deep_cache(name) > 1 or "error" in m:
                continue  # the shallow steps skip work: a FLOP rate per step would not compare
            rate, arithmetic = flops["unet_step_gflop"] / m["unet_step_s"], limit_kind(name, native_bf16)
            if arithmetic not in limit["limit_gflops"]:  # bf16 emulated on a CPU without it: held to f32's
                arithmetic = f"f32 (no native {arithmetic})"
            best = limit["limit_gflops"][arithmetic.split()[0]]
            lines.append(f"| {name} | {rate:.0f} | {arithmetic}, {best:.0f} GFLOP/s | {100 * rate / best:.0f}% |")
    return "\n".join(lines)


def limit_kind(name: str, native_bf16: bool) -> str:
    """The arithmetic a runner's UNet mostly computes in, whose limit (bench/limit.py) its rate is held to:
    int8 where its activations are int8 too (hybrid, or int8 activations), bf16 where it computes in bf16,
    f32 otherwise (weight-only int8 and int4, and stable-diffusion.cpp's quantized formats, dequantize).
    optimum-intel and openvino.genai run at OpenVINO's default, which is bf16 on CPUs with native bf16."""
    if "int8-hybrid" in name or "int8 activations" in name:
        return "int8"
    at_default = RUNNERS[name][0] in ("optimum", "genai")
    return "bf16" if "bf16" in name or (at_default and native_bf16) else "f32"


def chart(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name in summary if "error" not in summary[name]]
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
    parser.add_argument(
        "--optimum-python", "--peer-python", help="python of a venv with optimum-intel (and openvino-genai)"
    )
    parser.add_argument("--genai-python", help="python of a venv with openvino-genai (default: --optimum-python)")
    parser.add_argument("--sdcpp-python", help="python of a venv with stable-diffusion-cpp-python")
    parser.add_argument(
        "--sdcpp-steps", type=int, help="steps of stable-diffusion.cpp's runs (default: --steps): its steps are slow"
    )
    parser.add_argument("--flops", type=Path, help="JSON from bench/flops.py, for GFLOP/s")
    parser.add_argument("--limit", type=Path, help="JSON from bench/limit.py, for the fraction of the limit")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "peers.json")
    parser.add_argument("--from-log", type=Path, help="summarise the per-run lines a run printed (no new runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work, args.steps)
    names = args.runners.split(";")
    given = {"optimum": args.optimum_python, "genai": args.genai_python or args.optimum_python}
    pythons = {kind: python for kind, python in (given | {"sdcpp": args.sdcpp_python}).items() if python}
    missing = sorted({RUNNERS[n][0] for n in names} & {"optimum", "genai", "sdcpp"} - set(pythons))
    if missing and not args.from_log:
        raise SystemExit(f"no venv given for {', '.join(missing)}: pass --{missing[0]}-python (see --help)")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    if args.from_log:
        for line in args.from_log.read_text().splitlines():
            name, _, result = line.partition(": {")
            if name in runs:
                runs[name].append(ast.literal_eval("{" + result))
    else:
        prepare(args.work, names, pythons)
        for i in range(args.runs):
            print(f"round {i + 1}/{args.runs}", flush=True)
            steps = {"*": args.steps, "sdcpp": args.sdcpp_steps or args.steps}
            for name, result in run_round(names, args.work, steps, pythons).items():
                runs[name].append(result)
    summary = summarise(runs)
    sizes = {name: folder_gb(args.work / RUNNERS[name][1]) for name in names}
    flops = json.loads(args.flops.read_text()) if args.flops else None
    limit = json.loads(args.limit.read_text()) if args.limit else None
    record = {"machine": machine_line(), "steps": args.steps, "runs": args.runs, "median": summary, "all": runs}
    args.out.write_text(json.dumps({**record, "folder_gb": sizes, "flops": flops, "limit": limit}, indent=2) + "\n")
    print(table(summary, sizes, flops, limit))
    try:
        chart(summary, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)


if __name__ == "__main__":
    main()
