"""What a ControlNet costs per denoising step, on the real SD 1.5 architecture with random weights.

Takes an SD 1.5-architecture diffusers folder and its sdcpu conversion (as bench/lora_speed.py builds
them), makes a random ControlNet of SD 1.5's shape from its UNet (diffusers' `ControlNetModel.from_unet`,
the ControlNet v1.1 architecture) and converts it at the folder's precision. Then, in one process,
alternating round by round, 512x512 guided Euler images of `--steps` steps, each step timed from the
pipeline's step callback (the first step of each image is left out):

- `plain`: a fresh pipeline, no ControlNet: today's UNet step;
- `controlnet`: the same with one ControlNet at weight 1 (its residual inputs compiled in);
- `zeros`: that pipeline's next image without a ControlNet (its UNet fed zero residuals).

Then diffusers' StableDiffusionControlNetPipeline in PyTorch fp32 with the same weights, 2 steps, the
second timed.

    python bench/controlnet_speed.py --source /tmp/sdcpu-lora/diffusers --folder /tmp/sdcpu-lora/fp16 \
        --work /tmp/sdcpu-cn --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sdcpu.bench.machine import machine_line

PROMPT = "a photograph of an astronaut riding a horse"
SIZE = 512


def make_controlnet(source: Path, work: Path, fmt: str, precision: str) -> tuple[Path, Path]:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdcpu.export.convert import convert

    torch.manual_seed(0)
    raw, converted = work / "controlnet-diffusers", work / f"controlnet-{precision}"
    if not raw.exists():
        controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(source, subfolder="unet"))
        with torch.no_grad():  # the zero convolutions made random, so its residuals are not all zeros
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                conv.weight.normal_(0, 0.01)
        controlnet.save_pretrained(raw)
    if not converted.exists():
        convert(str(raw), converted, fmt, precision, progress=print)
    return raw, converted


def control_image() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    ImageDraw.Draw(image).ellipse((96, 96, 416, 416), outline=(255, 255, 255), width=3)
    return image


def step_times(pipe: Any, steps: int, controls: list[Any]) -> list[float]:
    stamps: list[float] = []

    def callback(done: int, total: int, latents: Any) -> None:
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    pipe(PROMPT, steps=steps, seed=1, width=SIZE, height=SIZE, scheduler="euler", controls=controls, callback=callback)
    edges = [start, *stamps]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)][1:]


def diffusers_step(source: Path, controlnet: Path) -> float:
    import diffusers
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    nets = diffusers.ControlNetModel.from_pretrained(controlnet)
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        source, controlnet=nets, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    stamps: list[float] = []

    def on_step(pipeline: Any, step: int, t: Any, kwargs: dict) -> dict:
        stamps.append(time.perf_counter())
        return kwargs

    with torch.no_grad():
        pipe(
            PROMPT,
            image=control_image(),
            num_inference_steps=2,
            height=SIZE,
            width=SIZE,
            output_type="latent",
            callback_on_step_end=on_step,
        )
    return stamps[1] - stamps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the SD 1.5-architecture diffusers folder")
    parser.add_argument("--folder", type=Path, required=True, help="its sdcpu conversion")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from sdcpu import Pipeline
    from sdcpu.format.manifest import Manifest
    from sdcpu.runtime.controlnet.setting import ControlSetting

    manifest = Manifest.load(args.folder)
    args.work.mkdir(parents=True, exist_ok=True)
    raw, converted = make_controlnet(args.source, args.work, manifest.format, manifest.precision)
    control = ControlSetting.of(converted, control_image())
    times: dict[str, list[float]] = {"plain": [], "controlnet": [], "zeros": []}
    for round_ in range(args.rounds + 1):  # the first round primes the compiled-model cache, untimed
        plain = step_times(Pipeline.load(args.folder), args.steps, [])
        pipe = Pipeline.load(args.folder)
        steered = step_times(pipe, args.steps, [control])
        zeros = step_times(pipe, args.steps, [])
        if round_:
            times["plain"] += plain
            times["controlnet"] += steered
            times["zeros"] += zeros
        print(
            f"round {round_}: plain {np.median(plain):.3f} s, controlnet {np.median(steered):.3f} s, "
            f"zeros {np.median(zeros):.3f} s",
            flush=True,
        )
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_step = diffusers_step(args.source, raw)
    result = {
        "machine": machine_line(),
        "folder": f"{manifest.format} {manifest.precision}",
        "step_seconds": medians,
        "diffusers_fp32_controlnet_step_seconds": torch_step,
        "controlnet_over_plain": medians["controlnet"] / medians["plain"],
        "controlnet_over_diffusers": medians["controlnet"] / torch_step,
        "zeros_over_plain": medians["zeros"] / medians["plain"],
        "rounds": args.rounds,
        "steps": args.steps,
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
