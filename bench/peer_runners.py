"""The peers' runners for bench/compare_peers.py, each one guided 512x512 Euler generation of PROMPT,
reported as sdcpu's runner reports (sdcpu.bench.peers.report), and the peers' own exports.

Each runs in its tool's own virtual environment, with this repository's src on PYTHONPATH (the report
helpers import only the standard library and numpy):
- optimum-intel's OVStableDiffusionPipeline (venv with optimum-intel[openvino], diffusers, nncf);
- openvino.genai's Text2ImagePipeline (openvino-genai, the same OpenVINO as sdcpu's);
- stable-diffusion.cpp through stable-diffusion-cpp-python (built from source with -march=native).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, report
from sdcpu.bench.timing import Timed, timed_images

SIZE, GUIDANCE = 512, 7.5
SRC = Path(__file__).resolve().parents[1] / "src"


def peer_env() -> dict[str, str]:
    """A peer's venv finds the report helpers in this repository's src (they need only numpy)."""
    return {**os.environ, "PYTHONPATH": str(SRC)}


def run_optimum(folder: Path, steps: int) -> dict[str, Any]:
    """optimum-intel, static 512x512 shapes (as its docs advise), OpenVINO's default precision."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    start = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(folder, compile=False)
    pipe.reshape(batch_size=1, height=SIZE, width=SIZE, num_images_per_prompt=1)
    pipe.compile()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    text, unet, vae = Timed(pipe.text_encoder.forward), Timed(pipe.unet.forward), Timed(pipe.vae_decoder.forward)
    pipe.text_encoder.forward, pipe.unet.forward, pipe.vae_decoder.forward = text, unet, vae
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, generator=generator, height=SIZE, width=SIZE)
    total = time.perf_counter() - start
    return report(load, total, text.seconds, unet.seconds, vae.seconds)


def run_genai(folder: Path, steps: int) -> dict[str, Any]:
    """openvino.genai's C++ loop, reshaped to static 512x512 shapes, OpenVINO's default precision, Euler.
    Its own performance metrics give each network's time (microseconds)."""
    import openvino_genai as genai

    start = time.perf_counter()
    pipe = genai.Text2ImagePipeline(str(folder))
    config = folder / "scheduler" / "scheduler_config.json"
    pipe.set_scheduler(genai.Scheduler.from_config(str(config), genai.Scheduler.Type.EULER_DISCRETE))
    pipe.reshape(1, SIZE, SIZE, GUIDANCE)
    pipe.compile("CPU")
    load = time.perf_counter() - start
    start = time.perf_counter()
    pipe.generate(PROMPT, width=SIZE, height=SIZE, num_inference_steps=steps, guidance_scale=GUIDANCE, rng_seed=0)
    total = time.perf_counter() - start
    metrics = pipe.get_performance_metrics()
    unet = [d / 1e6 for d in metrics.raw_metrics.unet_inference_durations]
    text = [sum(metrics.get_text_encoder_infer_duration().values()) / 1e3]  # milliseconds
    vae = [metrics.get_vae_decoder_infer_duration() / 1e3]
    return report(load, total, text, unet, vae)


def run_sdcpp(checkpoint: Path, steps: int, weight_type: str) -> dict[str, Any]:
    """stable-diffusion.cpp on the single-file checkpoint, its weights converted to `weight_type` (f16,
    q8_0, q4_0) at load, as its --type does; every core. It reports each sampling step through its
    progress callback: the steps are the intervals between callbacks, the first one counted from the
    call (so it holds the text encoder too), and the decode is what follows the last."""
    from stable_diffusion_cpp import StableDiffusion

    start = time.perf_counter()
    sd = StableDiffusion(model_path=str(checkpoint), wtype=weight_type, n_threads=os.cpu_count() or 1, verbose=False)
    load = time.perf_counter() - start
    marks: list[float] = []

    def progress(step: int, total_steps: int, _seconds: float) -> None:
        if total_steps == steps:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    sd.generate_image(
        PROMPT,
        width=SIZE,
        height=SIZE,
        cfg_scale=GUIDANCE,
        sample_method="euler",
        scheduler="discrete",
        sample_steps=steps,
        seed=0,
        progress_callback=progress,
    )
    total = time.perf_counter() - start
    if len(marks) < steps:
        raise RuntimeError(f"stable-diffusion.cpp reported {len(marks)} of {steps} steps")
    marks = marks[-steps:]
    first = marks[0] - start
    intervals = [marks[i + 1] - marks[i] for i in range(steps - 1)]
    return report(load, total, [0.0], [first, *intervals], [start + total - marks[-1]])


def export_optimum(diffusers: Path, out: Path, precision: str, calibration_calls: int, prompts: list[str]) -> None:
    """optimum-intel's export: fp32, int8 weight-only, or NNCF's hybrid int8 (weights of every network
    int8, and the UNet's activations too, from `calibration_calls` UNet calls of `prompts` at 512x512)."""
    from optimum.intel import OVStableDiffusionPipeline, OVWeightQuantizationConfig

    config = None  # fp32
    if precision == "int8":
        config = OVWeightQuantizationConfig(bits=8)
    elif precision == "int8-hybrid":
        hybrid = {"quant_method": "hybrid", "dataset": prompts, "num_samples": calibration_calls}
        config = OVWeightQuantizationConfig(bits=8, **hybrid)
    pipe = OVStableDiffusionPipeline.from_pretrained(diffusers, export=True, compile=False, quantization_config=config)
    pipe.save_pretrained(out)
    # What optimum-cli adds to the export (openvino.genai tokenizes with it); save_pretrained does not.
    from optimum.exporters.openvino.convert import export_tokenizer

    export_tokenizer(pipe.tokenizer, out / "tokenizer")


def export_optimum_in(
    python: str, diffusers: Path, out: Path, precision: str, calibration_calls: int, prompts: list[str]
) -> int:
    """export_optimum, run by `python` (optimum-intel's venv); returns its exit status."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import peer_runners; "
        "peer_runners.export_optimum(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], "
        "int(sys.argv[5]), sys.argv[6].split('|'))"
    )
    args = [str(Path(__file__).parent), str(diffusers), str(out), precision, str(calibration_calls), "|".join(prompts)]
    return subprocess.run([python, "-c", code, *args], env=peer_env()).returncode


# Few-step images (bench/fewstep_speed.py): SD-Turbo's schedule (Euler a, trailing timesteps), no guidance,
# whole images timed end to end after one to warm up, as sdcpu's and diffusers' runners there are.


def tiny_decoder_view(folder: Path, out: Path) -> Path:
    """`folder` (an sdcpu conversion with a tiny decoder) as the peers read a pipeline: every component
    linked as it is, but vae_decoder/ is the tiny decoder (the same input and output names, pixels in
    [-1, 1]) with the full decoder's config, its scaling factor 1 (TAESD's), as FastSD CPU and
    optimum-intel's SD-Turbo notebook give optimum-intel a TAESD decoder."""
    import json
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for entry in folder.iterdir():
        if entry.name not in ("vae_decoder", "tiny_vae_decoder"):
            (out / entry.name).symlink_to(entry.resolve())
    (out / "vae_decoder").mkdir()
    for name in ("openvino_model.xml", "openvino_model.bin"):
        (out / "vae_decoder" / name).symlink_to((folder / "tiny_vae_decoder" / name).resolve())
    config = json.loads((folder / "vae_decoder" / "config.json").read_text()) | {"scaling_factor": 1.0}
    (out / "vae_decoder" / "config.json").write_text(json.dumps(config, indent=2))
    return out


def fast_optimum(folder: Path, steps: int, runs: int) -> dict[str, Any]:
    """optimum-intel's OVStableDiffusionPipeline, static 512x512 shapes, OpenVINO's default precision."""
    import torch
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(folder, compile=False)
    pipe.reshape(batch_size=1, height=SIZE, width=SIZE, num_images_per_prompt=1)
    # its static UNet batch assumes guidance (2); without guidance the UNet gets a batch of 1
    shapes = {node.get_any_name(): node.get_partial_shape() for node in pipe.unet.model.inputs}
    for name in ("sample", "encoder_hidden_states"):
        shapes[name][0] = 1
    pipe.unet.model.reshape(shapes)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, generator=generator, height=SIZE, width=SIZE)

    return {"seconds": timed_images(generate, runs), "compute": "OpenVINO default", "peak_rss_gb": peak_rss_gb()}


def fast_genai(folder: Path, steps: int, runs: int) -> dict[str, Any]:
    """openvino.genai's Text2ImagePipeline, its scheduler read from the folder, static 512x512 shapes."""
    import openvino_genai as genai

    pipe = genai.Text2ImagePipeline(str(folder))
    pipe.reshape(1, SIZE, SIZE, 0.0)
    pipe.compile("CPU")

    def generate(seed: int) -> None:
        pipe.generate(PROMPT, width=SIZE, height=SIZE, num_inference_steps=steps, guidance_scale=0.0, rng_seed=seed)

    return {"seconds": timed_images(generate, runs), "compute": "OpenVINO default", "peak_rss_gb": peak_rss_gb()}


def fast_sdcpp(checkpoint: Path, taesd: Path | None, steps: int, runs: int, weight_type: str) -> dict[str, Any]:
    """stable-diffusion.cpp on the single-file checkpoint at `weight_type`, Euler a, no guidance; with
    `taesd` (diffusers' AutoencoderTiny weights) its tiny decoder (its --taesd)."""
    from stable_diffusion_cpp import StableDiffusion

    extra = {"taesd_path": str(taesd)} if taesd else {}
    threads = os.cpu_count() or 1
    sd = StableDiffusion(model_path=str(checkpoint), wtype=weight_type, n_threads=threads, verbose=False, **extra)

    settings = {"cfg_scale": 1.0, "sample_method": "euler_a", "sample_steps": steps}

    def generate(seed: int) -> None:
        sd.generate_image(PROMPT, width=SIZE, height=SIZE, seed=seed, **settings)

    return {"seconds": timed_images(generate, runs), "compute": f"{weight_type} weights", "peak_rss_gb": peak_rss_gb()}
