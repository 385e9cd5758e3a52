"""numpy schedulers reproducing diffusers' timesteps and step math; one algorithm per file.

`make_scheduler(name, config)` builds one by its user-facing name; `SCHEDULER_FOR_CLASS` maps a
model's own diffusers scheduler class to that name (the default for `generate`).
"""

from __future__ import annotations

from collections.abc import Callable

from sdcpu.runtime.errors import SdcpuError
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


def make_scheduler(name: str, config: SchedulerConfig) -> Scheduler:
    """A fresh scheduler called `name` (see SCHEDULERS) reading the model's training schedule."""
    try:
        factory = SCHEDULERS[name]
    except KeyError:
        raise SdcpuError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    return factory(config)


__all__ = ["SCHEDULERS", "Scheduler", "SchedulerConfig", "default_scheduler_name", "make_scheduler"]
