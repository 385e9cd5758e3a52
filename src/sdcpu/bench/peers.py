"""What the benchmark scripts (bench/) share: random-weight pipelines of real architectures, and one
timed generation each by sdcpu and by diffusers-PyTorch, reported alike.

torch and diffusers are imported inside the functions that use them: `sdcpu bench` and the torch-free
runtime never import them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.timing import Timed

PROMPT = "a photograph of an astronaut riding a horse"


def random_pipeline(reference: Path, folder: Path) -> None:
    """A diffusers folder of the configs (no weights) in `reference`, with random weights (fixed seed):
    its UNet, VAE, text encoder and depth estimator where it has one, and its tokenizer and schedulers."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        DPTConfig,
        DPTForDepthEstimation,
    )

    torch.manual_seed(0)
    makers = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(reference / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(reference / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(reference / "text_encoder")),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(reference / "text_encoder_2")
        ),
        "depth_estimator": lambda: DPTForDepthEstimation(DPTConfig.from_pretrained(reference / "depth_estimator")),
    }
    for component, make in makers.items():  # one at a time: SDXL's UNet alone is 10 GB at fp32
        if (reference / component).exists() and not (folder / component).exists():
            make().save_pretrained(folder / component)
    for sub in ("tokenizer", "tokenizer_2", "scheduler", "low_res_scheduler", "feature_extractor"):
        if (reference / sub).exists():
            shutil.copytree(reference / sub, folder / sub, dirs_exist_ok=True)
    index = json.loads((reference / "model_index.json").read_text())
    # No safety checker weights are written: say so, as diffusers does, so that every loader accepts the folder.
    if "safety_checker" in index:
        index |= {"safety_checker": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def report(load: float, total: float, text: list[float], unet: list[float], vae: list[float]) -> dict[str, Any]:
    """Seconds of each phase (the median UNet step, the first apart: it may include compilation), and
    this process's peak memory."""
    steady = unet[1:] if len(unet) > 1 else unet
    return {
        "load_s": load,
        "end_to_end_s": total,
        "text_encoder_s": sum(text),
        "unet_step_s": statistics.median(steady),
        "unet_first_step_s": unet[0],
        "vae_decode_s": sum(vae),
        "peak_rss_gb": peak_rss_gb(),
    }


def run_sdcpu(
    model: Path,
    backend: str,
    steps: int,
    deep_cache: int = 1,
    winograd: bool = True,
    token_downsampling: int = 1,
    compute_precision: str = "f32",
    int8_activations: bool = False,
) -> dict[str, Any]:
    """One guided 512x512 Euler generation of PROMPT by sdcpu, each network timed."""
    start = time.perf_counter()
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines import Pipeline

    options = LoadOptions(
        backend=backend,
        winograd=winograd,
        token_downsampling=token_downsampling,
        compute_precision=compute_precision,
        int8_activations=int8_activations,
    )
    pipe: Any = Pipeline.load(model, options)
    load = time.perf_counter() - start
    pipe.text_encoder, pipe.unet, pipe.vae_decoder = (
        Timed(m) for m in (pipe.text_encoder, pipe.unet, pipe.vae_decoder)
    )
    pipe.unet_shallow = shallow = Timed(pipe.unet_shallow)
    start = time.perf_counter()
    pipe(PROMPT, steps=steps, seed=0, scheduler="euler", width=512, height=512, deep_cache=deep_cache)
    total = time.perf_counter() - start
    times = (pipe.text_encoder.seconds, pipe.unet.seconds, pipe.vae_decoder.seconds)
    result = report(load, total, *times)
    result["compute_precision"] = pipe.runtime_info()["compute_precision"]
    if shallow.seconds:  # DeepCache: the shallow steps, and all UNet time spent
        result["unet_shallow_step_s"] = statistics.median(shallow.seconds[1:] or shallow.seconds)
        result["unet_total_s"] = sum(pipe.unet.seconds) + sum(shallow.seconds)
    return result


def run_pytorch(model: Path, steps: int, bf16: bool = False) -> dict[str, Any]:
    """The same generation by diffusers' StableDiffusionPipeline on PyTorch."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        model, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    text, unet, vae = Timed(pipe.text_encoder.forward), Timed(pipe.unet.forward), Timed(pipe.vae.decode)
    pipe.text_encoder.forward, pipe.unet.forward, pipe.vae.decode = text, unet, vae
    start = time.perf_counter()
    # bf16: PyTorch's CPU autocast, which runs matmuls and convolutions in bf16 (oneDNN) and keeps the rest fp32.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        pipe(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), height=512, width=512)
    total = time.perf_counter() - start
    return report(load, total, text.seconds, unet.seconds, vae.seconds)
