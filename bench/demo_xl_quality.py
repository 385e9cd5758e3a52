"""Quality of demo-xl (the demo world through SDXL's architecture) at every precision, by the demo world's
oracle on the held-out captions, at the model's defaults (20 DDIM steps, SDXL's guidance 5).

    python bench/demo_xl_quality.py --source DIR [--count 240] [--work DIR]   (needs the [export] extra)

DIR is demo-xl's diffusers folder (tools/train_demo_xl.py --out). Each variant is converted from it and
run on the same captions and seeds; diffusers' StableDiffusionXLPipeline runs the original weights
from the same initial latents. The table goes into docs/quality.md between the `<!-- demo-xl -->`
markers, each row with the CPU it was measured on; SSIM and PSNR compare with OpenVINO fp32 at f32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from sdcpu.demo import world as world
from sdcpu.demo.oracle import evaluate
from sdcpu.export.calibration import CalibrationSettings
from sdcpu.export.convert import convert
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.precision import cpu_info

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "quality.md"
START, END = "<!-- demo-xl -->", "<!-- /demo-xl -->"
STEPS, GUIDANCE = 20, 5.0
# (format, precision, backend, compute precision)
VARIANTS = [
    ("openvino", "fp32", "openvino", "f32"),
    ("onnx", "fp32", "onnxruntime", "f32"),
    ("openvino", "fp16", "openvino", "f32"),
    ("openvino", "int8", "openvino", "f32"),
    ("openvino", "int8-hybrid", "openvino", "f32"),
    ("openvino", "int4", "openvino", "f32"),
    ("openvino", "fp16", "openvino", "bf16"),  # CPUs with native bf16 only
    ("openvino", "int8-hybrid", "openvino", "bf16"),
]


def runner(folder: Path, backend: str, compute: str):
    pipe = Pipeline.load(folder, LoadOptions(backend=backend, compute_precision=compute, cache=False))
    return lambda caption, seed: pipe(caption, steps=STEPS, guidance=GUIDANCE, seed=seed).array[0]


def diffusers_runner(source: Path):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(source)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latent = world.SIZE // 4

    def run(caption: str, seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).standard_normal((1, 4, latent, latent), dtype=np.float32)
        call = dict(num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=torch.from_numpy(noise))
        return pipe(caption, output_type="np", height=world.SIZE, width=world.SIZE, **call).images[0]

    return run


def measure(source: Path, work: Path, count: int) -> dict[str, dict]:
    train, _ = world.split_scenes()
    picks = np.random.default_rng(7).choice(len(train), 16, replace=False)
    calibration = CalibrationSettings(prompts=tuple(train[int(i)].caption(int(i)) for i in picks), size=128)
    results: dict[str, dict] = {}
    reference = None
    for fmt, precision, backend, compute in VARIANTS:
        name = f"demo-xl {fmt} {precision} ({backend})" + (f", {compute} compute" if compute != "f32" else "")
        if compute == "bf16" and not {"AVX512_BF16", "AMX-BF16"} & set(cpu_info().isa):
            continue
        folder = work / f"{fmt}-{precision}"
        if not folder.exists():
            convert(str(source), folder, fmt, precision, calibration=calibration, progress=lambda _: None)
        start = time.perf_counter()
        run = runner(folder, backend, compute)
        report = evaluate(run, count, reference)
        reference = reference or run
        results[name] = {**report.summary(), "seconds": time.perf_counter() - start, "cpu": cpu_info().describe()}
        results[name]["folder_mb"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
        print(name, results[name], flush=True)
    start = time.perf_counter()
    report = evaluate(diffusers_runner(source), count, reference)
    results["diffusers fp32 (PyTorch, original weights)"] = {**report.summary(), "cpu": cpu_info().describe()}
    return results


def render(results: dict[str, dict], count: int) -> str:
    attributes = [*world.ATTRIBUTES, "all"]
    cpus = list(dict.fromkeys(r["cpu"] for r in results.values()))
    lines = [
        f"Produced by `python bench/demo_xl_quality.py` on the {count} held-out captions, {STEPS} DDIM steps,",
        f"guidance {GUIDANCE} (demo-xl's defaults), seed = caption index. CPUs:",
        "",
        *[f"- CPU {'ABCDEFGH'[i]}: {cpu}" for i, cpu in enumerate(cpus)],
        "",
        "| model | CPU | " + " | ".join(attributes) + " | SSIM | PSNR (dB) | folder (MB) |",
        "|---|---|" + "---:|" * (len(attributes) + 3),
    ]
    for name, r in results.items():
        accuracy = " | ".join(f"{100 * r[f'accuracy_{a}']:.1f}%" for a in attributes)
        ssim = f"{r['ssim_mean']:.4f}" if "ssim_mean" in r else "(reference)"
        psnr = f"{r['psnr_mean_db']:.1f}" if "psnr_mean_db" in r else ""
        size = f"{r['folder_mb']:.1f}" if "folder_mb" in r else ""
        lines.append(f"| {name} | {'ABCDEFGH'[cpus.index(r['cpu'])]} | {accuracy} | {ssim} | {psnr} | {size} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="demo-xl's diffusers folder")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--work", type=Path, help="keep the converted folders here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        table = render(measure(args.source, work, args.count), args.count)
    text = DOC.read_text()
    if START not in text:
        text += f"\n## demo-xl\n\n{START}\n{END}\n"
    head, rest = text.split(START)
    DOC.write_text(head + START + "\n" + table + END + rest.split(END)[1])
    print(table)


if __name__ == "__main__":
    main()
