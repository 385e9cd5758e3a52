"""The peers' quality on the demo oracle, on the footing of bench/demo_quality.py: the demo model's
held-out captions, 20 DDIM steps (the model's scheduler), guidance 7.5, and each caption's initial
latents drawn as sdcpu draws them (`default_rng(seed)`), given to every peer.

    python bench/peer_quality.py --optimum-python /tmp/ov/bin/python --sdcpp-python /tmp/sdcpp/bin/python \\
        [--count 240] [--work DIR]

Rows:
- sdcpu's OpenVINO conversions of the demo source, as bench/demo_quality.py makes them (int8-hybrid
  calibrated on 128 UNet calls of 16 training captions), with and without int8 activations;
- optimum-intel on its own exports of the demo source: fp32, int8 (weight-only) and NNCF's hybrid int8,
  calibrated on as many UNet calls (128) of the same 16 training captions as sdcpu's int8-hybrid;
- openvino.genai on sdcpu's fp32 and int8-hybrid demo folders and on optimum-intel's exports;
- stable-diffusion.cpp on the demo's single-file checkpoint (its loader knows SD's own widths only: the
  row records what it says).

Every peer row runs at its tool's default compute precision, as in bench/compare_peers.py (bf16 on CPUs
with native bf16); sdcpu's rows say theirs, the bf16 ones on such CPUs only. Accuracy is the
oracle's; SSIM and PSNR are against sdcpu's OpenVINO fp32 images at f32 compute. Results go to
docs/peer_quality.json, and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from demo_quality import GUIDANCE, STEPS, calibration_prompts, sdcpu_runner
from interop import GENAI_GIVEN
from peer_runners import export_optimum_in

from sdcpu.bench.machine import machine_line
from sdcpu.demo import world
from sdcpu.demo.oracle import evaluate
from sdcpu.export.calibration import CalibrationSettings
from sdcpu.export.convert import convert
from sdcpu.models import SOURCE
from sdcpu.runtime.precision import openvino_capabilities

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_CALLS = 128  # as bench/demo_quality.py calibrates sdcpu's int8-hybrid

# Run in a peer's venv: python -c CODE FOLDER JOB OUT, the job a JSON list of [caption, seed].
PROLOGUE = """
import json, sys
import numpy as np
folder, job, out = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3]
s = json.loads(open(sys.argv[2] + ".settings").read())
def latents(seed):
    return np.random.default_rng(seed).standard_normal((1, 4, s["latent"], s["latent"]), dtype=np.float32)
"""
WORKERS = {
    "optimum": """
import torch
from optimum.intel import OVStableDiffusionPipeline
pipe = OVStableDiffusionPipeline.from_pretrained(folder)
pipe.set_progress_bar_config(disable=True)
def generate(caption, seed):
    return pipe(caption, num_inference_steps=s["steps"], guidance_scale=s["guidance"], height=s["size"],
                width=s["size"], latents=torch.from_numpy(latents(seed)), output_type="np").images[0]
""",
    "genai": GENAI_GIVEN
    + """
pipe = genai.Text2ImagePipeline(folder, "CPU")
def generate(caption, seed):
    image = pipe.generate(caption, width=s["size"], height=s["size"], num_inference_steps=s["steps"],
                          guidance_scale=s["guidance"], generator=Given(latents(seed))).data[0]
    return image / 255.0
""",
    "sdcpp": """
import os
from stable_diffusion_cpp import StableDiffusion
sd = StableDiffusion(model_path=folder, n_threads=os.cpu_count(), verbose=True)
def generate(caption, seed):  # its own noise: sd.cpp takes no initial latents
    image = sd.generate_image(caption, width=s["size"], height=s["size"], cfg_scale=s["guidance"],
                              sample_method="ddim_trailing", sample_steps=s["steps"], seed=seed)[0]
    return np.asarray(image) / 255.0
""",
}
EPILOGUE = """
images = [np.clip(np.asarray(generate(c, seed)) * 255.0 + 0.5, 0, 255).astype(np.uint8) for c, seed in job]
np.save(out, np.stack(images)[..., :3])
"""
# sdcpu's rows, measured in this process: row -> (folder under --work, compute precision, as demo_quality's)
SDCPU_ROWS = {
    "sdcpu OpenVINO fp32": ("openvino-fp32", "f32"),
    "sdcpu OpenVINO int8 + int8 activations": ("openvino-int8", "f32+int8"),
    "sdcpu OpenVINO int8-hybrid": ("openvino-int8-hybrid", "f32"),
    "sdcpu OpenVINO int8-hybrid + int8 activations": ("openvino-int8-hybrid", "f32+int8"),
    "sdcpu OpenVINO int4": ("openvino-int4", "f32"),
    # on CPUs with native bf16 (where OpenVINO's default, optimum-intel's and genai's, is bf16 too)
    "sdcpu OpenVINO fp32, bf16 compute": ("openvino-fp32", "bf16"),
    "sdcpu OpenVINO int8-hybrid + int8 activations, bf16 compute": ("openvino-int8-hybrid", "bf16+int8"),
}
# the peers' rows: row -> (tool, folder under --work)
ROWS = {
    "optimum-intel fp32": ("optimum", "optimum-fp32"),
    "optimum-intel int8": ("optimum", "optimum-int8"),
    "optimum-intel int8-hybrid": ("optimum", "optimum-int8-hybrid"),
    "openvino.genai on sdcpu's fp32 folder": ("genai", "openvino-fp32"),
    "openvino.genai on sdcpu's int8-hybrid folder": ("genai", "openvino-int8-hybrid"),
    "openvino.genai on optimum-intel's int8-hybrid export": ("genai", "optimum-int8-hybrid"),
    "stable-diffusion.cpp (default weights)": ("sdcpp", "demo.safetensors"),
}


def captions(count: int) -> list[tuple[str, int]]:
    """The (caption, seed) pairs evaluate() asks for, in its order."""
    asked: list[tuple[str, int]] = []
    evaluate(lambda caption, seed: asked.append((caption, seed)) or np.zeros((8, 8, 3)), count)
    return asked


def prepare(work: Path, pythons: dict[str, str]) -> None:
    calibration = CalibrationSettings(prompts=calibration_prompts(), size=CALIBRATION_CALLS)
    for precision in ("fp32", "int8", "int8-hybrid", "int4"):
        if not (work / f"openvino-{precision}").exists():
            convert(str(SOURCE), work / f"openvino-{precision}", "openvino", precision, calibration=calibration)
    for precision in ("fp32", "int8", "int8-hybrid"):
        if "optimum" in pythons and not (work / f"optimum-{precision}").exists():
            args = (SOURCE, work / f"optimum-{precision}", precision, CALIBRATION_CALLS, list(calibration.prompts))
            export_optimum_in(pythons["optimum"], *args)  # a failed export leaves its rows' errors
    if not (work / "demo.safetensors").exists():
        from compare_peers import single_file

        single_file(SOURCE, work / "demo.safetensors")


def lookup(images: dict[tuple[str, int], np.ndarray]) -> Callable[[str, int], np.ndarray]:
    """A generate(caption, seed) for evaluate() that answers with images made beforehand."""
    return lambda caption, seed: images[caption, seed]


def run_row(tool: str, python: str, folder: Path, job: Path, out: Path) -> np.ndarray:
    code = PROLOGUE + WORKERS[tool] + EPILOGUE
    done = subprocess.run([python, "-c", code, str(folder), str(job), str(out)], capture_output=True, text=True)
    if done.returncode != 0:  # the tool's own word on why, where it logged one, else the exception
        lines = (done.stdout + done.stderr).strip().splitlines() or [f"exit status {done.returncode}"]
        said = [line for line in lines if "failed" in line.lower()]  # its log's own line, before the traceback
        raise RuntimeError("; ".join(dict.fromkeys([*said[-1:], lines[-1]])))
    return np.load(out).astype(np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimum-python", required=True, help="python of a venv with optimum-intel, openvino-genai")
    parser.add_argument("--sdcpp-python", required=True, help="python of a venv with stable-diffusion-cpp-python")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sdcpu-peer-quality")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "peer_quality.json")
    args = parser.parse_args()
    pythons = {"optimum": args.optimum_python, "genai": args.optimum_python, "sdcpp": args.sdcpp_python}
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, pythons)
    asked = captions(args.count)
    job = args.work / "job.json"
    job.write_text(json.dumps(asked))
    # the demo's VAE downsamples by 4 (three levels), where SD's does by 8
    settings = {"steps": STEPS, "guidance": GUIDANCE, "size": world.SIZE, "latent": world.SIZE // 4}
    Path(f"{job}.settings").write_text(json.dumps(settings))
    reference_run = sdcpu_runner(args.work / "openvino-fp32", "openvino", compute="f32")
    reference = {key: reference_run(*key) for key in asked}
    results: dict[str, dict] = {}
    native_bf16 = "BF16" in openvino_capabilities("CPU")
    for name, (folder, compute) in SDCPU_ROWS.items():
        if compute.startswith("bf16") and not native_bf16:
            continue  # the CPU has no bf16 to compute in
        run = sdcpu_runner(args.work / folder, "openvino", compute=compute)
        results[name] = evaluate(run, args.count, lookup(reference)).summary()
        print(f"{name}: {results[name]}", flush=True)
    for name, (tool, folder) in ROWS.items():
        try:
            images = run_row(tool, pythons[tool], args.work / folder, job, args.work / f"{tool}-{folder}.npy")
        except RuntimeError as error:
            results[name] = {"error": str(error)}
            print(f"{name}: could not run: {error}", flush=True)
            continue
        given = dict(zip(asked, images, strict=True))
        report = evaluate(lookup(given), args.count, lookup(reference))
        results[name] = report.summary()
        print(f"{name}: {results[name]}", flush=True)
    record = {"machine": machine_line(), "count": args.count, "steps": STEPS, "results": results}
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
