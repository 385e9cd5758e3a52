"""numpy schedulers reproducing diffusers' timesteps and step math; one algorithm per file.

`make_scheduler(name, config)` builds one by its user-facing name; `SCHEDULER_FOR_CLASS` maps a
model's own diffusers scheduler class to that name (the default for `generate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdcpu.errors import SdcpuError
from sdcpu.runtime.schedulers.common import Scheduler, SchedulerConfig
from sdcpu.runtime.schedulers.ddim import DDIMScheduler
from sdcpu.runtime.schedulers.dpm_solver import DPMSolverMultistepScheduler
from sdcpu.runtime.schedulers.euler import EulerDiscreteScheduler
from sdcpu.runtime.schedulers.euler_ancestral import EulerAncestralDiscreteScheduler
from sdcpu.runtime.schedulers.lcm import LCMScheduler
from sdcpu.runtime.schedulers.pndm import PNDMScheduler

SCHEDULERS: dict[str, Callable[[SchedulerConfig], Scheduler]] = {
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
    "dpm++2m-karras": lambda config: DPMSolverMultistepScheduler(config, karras=True),
    "lcm": LCMScheduler,
}

SCHEDULER_FOR_CLASS = {
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "pndm",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a",
    "DPMSolverMultistepScheduler": "dpm++2m",
    "LCMScheduler": "lcm",
}


def default_scheduler_name(config: SchedulerConfig) -> str:
    """The model's own scheduler, by name; PNDM (SD's default) for classes we do not implement."""
    return SCHEDULER_FOR_CLASS.get(config.class_name, "pndm")


@dataclass(frozen=True)
class SamplingDefaults:
    """The steps and guidance a model is run with when none are given."""

    steps: int = 20
    guidance: float = 7.5


def sampling_defaults(config: SchedulerConfig, family: SamplingDefaults = SamplingDefaults()) -> SamplingDefaults:
    """What the model's scheduler implies: few-step models say so by theirs. An LCM scheduler (latent
    consistency models, LCM-LoRA fused, the demo's few-step model): 4 steps, guidance off (it is baked in);
    Euler a over "trailing" timesteps (SD-Turbo, SDXL-Turbo): 1 step, guidance off. Otherwise the
    family's own (`family`: SDXL's guidance is 5, as diffusers has it)."""
    if config.class_name == "LCMScheduler":
        return SamplingDefaults(4, 1.0)
    if config.class_name == "EulerAncestralDiscreteScheduler" and config.timestep_spacing == "trailing":
        return SamplingDefaults(1, 0.0)
    return family


def make_scheduler(name: str, config: SchedulerConfig) -> Scheduler:
    """A fresh scheduler called `name` (see SCHEDULERS) reading the model's training schedule."""
    try:
        factory = SCHEDULERS[name]
    except KeyError:
        raise SdcpuError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    return factory(config)


__all__ = [
    "SCHEDULERS",
    "SamplingDefaults",
    "Scheduler",
    "SchedulerConfig",
    "default_scheduler_name",
    "make_scheduler",
    "sampling_defaults",
]
