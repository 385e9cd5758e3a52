"""Quality of every conversion of the demo model, by the demo world's oracle on the held-out captions.

    python bench/demo_quality.py [--count 240] [--work DIR] [--only TEXT]   (needs the [export] extra)

Converts models/demo/source at each format and precision, runs the held-out captions with the same
seeds through each (and through diffusers on the original weights, with the same initial latents),
and writes docs/quality.json and docs/quality.md: per-attribute accuracy, and mean SSIM / PSNR against
the OpenVINO fp32 images. DeepCache rows reuse the UNet's deep features for N-1 of every N steps.
`--only TEXT` measures only the rows whose name contains TEXT (or any of TEXT;TEXT2;...) and keeps the
others from docs/quality.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sdcpu.bench.machine import machine_line as machine
from sdcpu.demo import world as world
from sdcpu.demo.oracle import evaluate
from sdcpu.export.calibration import CalibrationSettings
from sdcpu.export.convert import convert
from sdcpu.models import SOURCE
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.precision import cpu_info

STEPS, GUIDANCE = 20, 7.5
# (format, precision, backend, DeepCache interval, token downsampling factor, compute precision)
VARIANTS = [
    ("openvino", "fp32", "openvino", 1, 1, "f32"),
    ("onnx", "fp32", "onnxruntime", 1, 1, "f32"),
    ("openvino", "fp16", "openvino", 1, 1, "f32"),
    ("onnx", "fp16", "onnxruntime", 1, 1, "f32"),
    ("openvino", "int8", "openvino", 1, 1, "f32"),
    ("onnx", "int8", "onnxruntime", 1, 1, "f32"),
    ("openvino", "int8-hybrid", "openvino", 1, 1, "f32"),
    ("openvino", "int4", "openvino", 1, 1, "f32"),
    ("openvino", "fp32", "openvino", 2, 1, "f32"),
    ("openvino", "fp32", "openvino", 3, 1, "f32"),
    ("openvino", "fp32", "openvino", 5, 1, "f32"),
    ("openvino", "int8-hybrid", "openvino", 2, 1, "f32"),
    ("openvino", "fp32", "openvino", 1, 2, "f32"),
    ("openvino", "fp32", "openvino", 2, 2, "f32"),
    # bf16 compute: CPUs with native bf16 only (AVX512_BF16 or AMX)
    ("openvino", "fp32", "openvino", 1, 1, "bf16"),
    ("openvino", "int8", "openvino", 1, 1, "bf16"),
    ("openvino", "int8-hybrid", "openvino", 1, 1, "bf16"),
    ("openvino", "int4", "openvino", 1, 1, "bf16"),
    ("openvino", "fp32", "openvino", 2, 1, "bf16"),
    # "+int8": MatMuls with int8 or int4 weights quantize their activations on the fly (--int8-activations)
    ("openvino", "int8", "openvino", 1, 1, "f32+int8"),
    ("openvino", "int8-hybrid", "openvino", 1, 1, "f32+int8"),
    ("openvino", "int8", "openvino", 1, 1, "bf16+int8"),
    ("openvino", "int8-hybrid", "openvino", 1, 1, "bf16+int8"),
    ("openvino", "int4", "openvino", 1, 1, "bf16+int8"),
    ("openvino", "int8-hybrid", "openvino", 2, 1, "bf16+int8"),
]


def variant_name(
    fmt: str, precision: str, backend: str, deep_cache: int, token_downsampling: int, compute: str = "f32"
) -> str:
    name = f"sdcpu {fmt} {precision} ({backend})" + (f", DeepCache {deep_cache}" if deep_cache > 1 else "")
    name += f", ToDo {token_downsampling}" if token_downsampling > 1 else ""
    precision, _, int8 = compute.partition("+")
    name += f", {precision} compute" if precision != "f32" else ""
    return name + (" + int8 activations" if int8 else "")


def sdcpu_runner(folder: Path, backend: str, deep_cache: int = 1, token_downsampling: int = 1, compute: str = "f32"):
    precision, _, int8 = compute.partition("+")
    options = LoadOptions(
        backend=backend, token_downsampling=token_downsampling, compute_precision=precision, int8_activations=bool(int8)
    )
    pipe = Pipeline.load(folder, options)
    return lambda caption, seed: pipe(caption, steps=STEPS, guidance=GUIDANCE, seed=seed, deep_cache=deep_cache).array[
        0
    ]


def diffusers_runner():
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SOURCE, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latent = world.SIZE // 4

    def run(caption: str, seed: int) -> np.ndarray:
        # sdcpu's first draw from default_rng(seed) is the initial noise: give diffusers the same latents.
        noise = np.random.default_rng(seed).standard_normal((1, 4, latent, latent), dtype=np.float32)
        out = pipe(
            caption,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            latents=torch.from_numpy(noise),
            output_type="np",
            height=world.SIZE,
            width=world.SIZE,
        )
        return out.images[0]

    return run


def calibration_prompts(count: int = 16) -> tuple[str, ...]:
    # Training captions (never the held-out ones): what the demo model will be asked for.
    train, _ = world.split_scenes()
    rng = np.random.default_rng(7)
    return tuple(train[int(i)].caption(int(i)) for i in rng.choice(len(train), count, replace=False))


def _picked(name: str, only: str | None) -> bool:
    return only is None or any(part in name for part in only.split(";"))  # row names hold commas


def measure(work: Path, count: int, only: str | None, results: dict) -> dict:
    calibration = CalibrationSettings(prompts=calibration_prompts(), size=128)
    reference = None
    for fmt, precision, backend, deep_cache, token_downsampling, compute in VARIANTS:
        name = variant_name(fmt, precision, backend, deep_cache, token_downsampling, compute)
        folder = work / f"{fmt}-{precision}"
        if reference is not None and not _picked(name, only):
            continue
        if not folder.exists():
            convert(str(SOURCE), folder, fmt, precision, calibration=calibration, progress=lambda _: None)
        if reference is None:  # the first row, OpenVINO fp32 at f32 compute, is every other row's reference
            reference = sdcpu_runner(folder, backend, compute="f32")
            if not _picked(name, only):
                continue
        start = time.perf_counter()
        runner = sdcpu_runner(folder, backend, deep_cache, token_downsampling, compute)
        report = evaluate(runner, count, None if name == NAMES[0] else reference)
        results[name] = {**report.summary(), "seconds": time.perf_counter() - start, "cpu": cpu_info().describe()}
        results[name]["folder_mb"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
        print(name, results[name], flush=True)
    if _picked(DIFFUSERS, only):
        start = time.perf_counter()
        report = evaluate(diffusers_runner(), count, reference)
        results[DIFFUSERS] = {**report.summary(), "seconds": time.perf_counter() - start, "cpu": cpu_info().describe()}
    return {name: results[name] for name in [*NAMES, DIFFUSERS] if name in results}


NAMES = [variant_name(*v) for v in VARIANTS]
ZEN3 = "AMD EPYC (Zen 3), 2 cores, AVX2 FMA"
DIFFUSERS = "diffusers fp32 (PyTorch, original weights)"


def render(record: dict) -> str:
    attributes = [*world.ATTRIBUTES, "all"]
    cpus = list(dict.fromkeys(r["cpu"] for r in record["results"].values()))
    lines = [
        "# Quality",
        "",
        "Produced by `python bench/demo_quality.py`; each row names the CPU it was measured on:",
        "",
        *[f"- CPU {'ABCDEFGH'[i]}: {cpu}" for i, cpu in enumerate(cpus)],
        "",
        f"The bundled demo model on the {record['count']} held-out captions of its world (attribute combinations",
        f"never seen in training), {STEPS} DDIM steps (the model's scheduler), guidance {GUIDANCE}, seed = caption",
        "index. Accuracy is the oracle's verdict (`demo/world.py`); `all` means every named attribute is",
        "right. SSIM and PSNR compare each image with the OpenVINO fp32 image (f32 compute) of the same caption",
        "and seed, computed on the row's CPU.",
        "int8-hybrid is calibrated on 128 UNet inputs: 16 training captions, 8 DDIM steps each.",
        "DeepCache N (`--deep-cache N`) runs the whole UNet on every N-th step and the shallow pass between.",
        "ToDo F (`--token-downsampling F`) gives the highest-resolution self-attention one key and value per",
        "F x F block: in the demo UNet its 8x8 level (64 tokens to 16); in SD 1.5 at 512x512, 64x64 (4096 to 1024).",
        "Folder sizes include `unet_shallow/` only in rows measured since it was added (the DeepCache rows).",
        "Rows without a compute precision ran at f32; bf16 rows need a CPU with native bf16 (docs/precisions.md).",
        "int8 activations (`--int8-activations`): MatMuls with int8 or int4 weights quantize their activations",
        "to int8 on the fly (OpenVINO's dynamic quantization, groups of 64).",
        "",
        "| model | CPU | " + " | ".join(attributes) + " | SSIM | PSNR (dB) | folder (MB) |",
        "|---|---|" + "---:|" * (len(attributes) + 3),
    ]
    for name, r in record["results"].items():
        accuracy = " | ".join(f"{100 * r[f'accuracy_{a}']:.1f}%" for a in attributes)
        ssim = f"{r['ssim_mean']:.4f}" if "ssim_mean" in r else "(reference)"
        psnr = f"{r['psnr_mean_db']:.1f}" if "psnr_mean_db" in r else ""
        size = f"{r['folder_mb']:.1f}" if "folder_mb" in r else ""
        cpu = "ABCDEFGH"[cpus.index(r["cpu"])]
        lines.append(f"| {name} | {cpu} | {accuracy} | {ssim} | {psnr} | {size} |")
    return "\n".join(lines) + "\n"


def notes_after_the_table(page: str) -> str:
    """What quality.md holds after the table `render` writes (its notes, the few-step section), kept."""
    lines = page.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| model | CPU |")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "".join(line + "\n" for line in lines[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--work", type=Path, help="keep the conversions here (default: a temporary folder)")
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent.parent / "docs")
    parser.add_argument("--only", help="measure only the rows whose name contains this; keep the rest")
    args = parser.parse_args()
    previous = json.loads((args.docs / "quality.json").read_text())["results"] if args.only else {}
    for row in previous.values():  # rows from before rows named their CPU: all were measured on this one
        row.setdefault("cpu", ZEN3)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = measure(work, args.count, args.only, previous)
    record = {"machine": machine(), "count": args.count}
    record["results"] = results
    (args.docs / "quality.json").write_text(json.dumps(record, indent=2) + "\n")
    page = args.docs / "quality.md"
    page.write_text(render(record) + notes_after_the_table(page.read_text() if page.exists() else ""))


if __name__ == "__main__":
    main()
