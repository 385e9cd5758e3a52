"""Calibration data for `int8-hybrid`: UNet inputs recorded while the float model denoises prompts.

Each prompt runs a short DDIM schedule from pure noise with classifier-free guidance, so the samples
cover the whole range of timesteps and both the conditional and unconditional halves of the batch,
as the UNet sees them at generation time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.runtime.components.tokenizer import ClipTokenizer
from sdcpu.runtime.schedulers import SchedulerConfig, make_scheduler

DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse at sunset",
    "a close-up portrait of an old man with a beard, studio lighting",
    "a bowl of fruit on a wooden table, still life",
    "a futuristic city skyline at night, neon lights",
    "a red sports car on a mountain road",
    "a cozy living room with a fireplace, interior design",
    "a cat sleeping on a windowsill, soft light",
)


@dataclass(frozen=True)
class CalibrationSettings:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    size: int = 32  # UNet calls recorded (each a guided batch of 2)
    guidance: float = 7.5
    seed: int = 0
    # The square image size, in pixels, the inputs are recorded at; None: the model's native size. Each
    # UNet call costs about the square of it, and SDXL's 1024 makes calibration the longest part of a
    # convert. What a smaller size costs in quality has not been measured.
    resolution: int | None = None

    def to_dict(self) -> dict[str, Any]:
        settings = {"prompts": list(self.prompts), "size": self.size, "guidance": self.guidance, "seed": self.seed}
        return settings | ({"resolution": self.resolution} if self.resolution is not None else {})

    @classmethod
    def from_file(cls, path: Path, size: int, resolution: int | None = None) -> CalibrationSettings:
        prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        return cls(prompts=prompts or DEFAULT_PROMPTS, size=size, resolution=resolution)


# A prompt -> the UNet's text inputs (prompt embeddings, and SDXL's pooled text and time ids) for the
# batch [unconditional, prompt]. Each export family makes one from its exported text encoders.
TextInputs = Callable[[str], dict[str, np.ndarray]]


def collect_unet_inputs(
    unet: Any,
    text_inputs: TextInputs,
    scheduler_config: dict[str, Any],
    latent_shape: tuple[int, int, int],
    settings: CalibrationSettings,
) -> list[dict[str, np.ndarray]]:
    """Run the float `unet` (an openvino.Model) on the prompts; return `settings.size` input dicts."""
    import openvino as ov

    compiled = ov.Core().compile_model(unet, "CPU")
    rng = np.random.default_rng(settings.seed)
    steps = max(1, math.ceil(settings.size / len(settings.prompts)))
    config = SchedulerConfig.from_dict(scheduler_config)
    samples: list[dict[str, np.ndarray]] = []
    for prompt in settings.prompts:
        text = text_inputs(prompt)
        scheduler = make_scheduler("ddim", config)
        scheduler.set_timesteps(steps)
        x = rng.standard_normal((1, *latent_shape), dtype=np.float32) * np.float32(scheduler.init_noise_sigma)
        for t in scheduler.timesteps:
            inputs = {
                "sample": scheduler.scale_model_input(np.concatenate([x, x]), t),
                "timestep": np.full(2, t, dtype=np.float32),
                **text,
            }
            samples.append(inputs)
            eps_uncond, eps_text = np.split(compiled(inputs)[0], 2)
            x = scheduler.step(eps_uncond + np.float32(settings.guidance) * (eps_text - eps_uncond), t, x, rng)
            if len(samples) == settings.size:
                return samples
    return samples


def compiled_text_encoder(folder: Path) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The text encoder exported into `folder` (OpenVINO IR), as input ids -> all its outputs."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(folder / "openvino_model.xml"), "CPU")
    return lambda ids: [np.asarray(value) for value in compiled(ids).values()]


def clip_text_inputs(staged: Path, tokenizers: dict[str, Path], sample_size: int) -> TextInputs:
    """SD 1.x/2.x: the text encoder's last hidden state, for "" and the prompt."""
    encode, tokenizer = compiled_text_encoder(staged / "text_encoder"), ClipTokenizer(tokenizers["tokenizer"])
    return lambda prompt: {"encoder_hidden_states": encode(tokenizer(["", prompt]))[0]}
