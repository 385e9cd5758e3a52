"""What every scheduler shares: the frozen config, the training noise schedule and the step counter.

Notation (DDPM, https://arxiv.org/abs/2006.11239): beta_t is the noise added at training step t,
alpha_bar_t = prod_{s<=t} (1 - beta_s), and x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
The k-diffusion schedulers (Karras et al., https://arxiv.org/abs/2206.00364) use instead
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), with x = x_0 + sigma eps.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass

import numpy as np

# The values of the config's named fields that the schedulers implement.
KNOWN: dict[str, tuple[str | None, ...]] = {
    "beta_schedule": ("scaled_linear", "linear", "squaredcos_cap_v2"),
    "prediction_type": ("epsilon", "v_prediction", "sample"),
    "timestep_spacing": (None, "leading", "trailing", "linspace"),
}


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of diffusers' scheduler_config.json that the runtime uses.

    `timestep_spacing` is None when the file does not set it: each scheduler then applies its own
    default, exactly as diffusers' `Scheduler.from_config` does.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None
    steps_offset: int = 0
    set_alpha_to_one: bool = False
    class_name: str = "PNDMScheduler"

    @classmethod
    def from_dict(cls, data: dict) -> SchedulerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names and v is not None}
        if "_class_name" in data:
            values["class_name"] = data["_class_name"]
        return cls(**values).checked()

    def checked(self) -> SchedulerConfig:
        """Itself, or ValueError naming the first field a scheduler could not run with: a config file is
        input like any other (a string where a number belongs, a billion training steps)."""
        numbers = {"beta_start": (float, int), "beta_end": (float, int)}
        for name, kinds in numbers.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kinds) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a number from 0 to 1; got {value!r}")
        for name, most in (("num_train_timesteps", 100_000), ("steps_offset", 1_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
                raise ValueError(f"{name} must be a whole number from 0 to {most:,}; got {value!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2; got {self.num_train_timesteps}")
        for name, known in KNOWN.items():
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {', '.join(map(str, known))}; got {getattr(self, name)!r}")
        if not isinstance(self.class_name, str) or not isinstance(self.set_alpha_to_one, bool):
            raise ValueError("_class_name must be text and set_alpha_to_one true or false")
        return self


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """alpha_bar_t for t = 0 .. T-1, float32 as diffusers computes it."""
    n = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        # Latent diffusion's schedule: linear in sqrt(beta).
        betas = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=np.float32) ** 2
    elif config.beta_schedule == "linear":
        betas = np.linspace(config.beta_start, config.beta_end, n, dtype=np.float32)
    elif config.beta_schedule == "squaredcos_cap_v2":
        # Improved DDPM's cosine schedule (Nichol & Dhariwal, https://arxiv.org/abs/2102.09672, eq. 17).
        t = np.arange(n + 1, dtype=np.float64) / n
        alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999).astype(np.float32)
    else:
        raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}")
    return np.cumprod(1.0 - betas, dtype=np.float32)


def spacing(config: SchedulerConfig, default: str) -> str:
    return config.timestep_spacing or default


def discrete_timesteps(config: SchedulerConfig, n: int, default_spacing: str) -> np.ndarray:
    """The n integer training timesteps to visit, high to low (diffusers' DDIM/PNDM/DPM spacings)."""
    total = config.num_train_timesteps
    kind = spacing(config, default_spacing)
    if kind == "linspace":
        return np.linspace(0, total - 1, n).round()[::-1].astype(np.int64)
    if kind == "leading":
        return (np.arange(0, n) * (total // n)).round()[::-1].astype(np.int64) + config.steps_offset
    if kind == "trailing":
        return np.round(np.arange(total, 0, -total / n)).astype(np.int64) - 1
    raise ValueError(f"unknown timestep_spacing {kind!r}")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep whose sigma is each of `sigmas`, by log-linear interpolation."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def predicted_x0(config: SchedulerConfig, model_output, sample, alpha_bar):
    """x_0 from the model's output at a step with alpha_bar_t (epsilon or v parametrisation).

    v-prediction (Salimans & Ho, https://arxiv.org/abs/2202.00512, sec. 4):
    v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, so x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v.
    """
    a, b = np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar)
    if config.prediction_type == "epsilon":
        return (sample - b * model_output) / a
    if config.prediction_type == "v_prediction":
        return a * sample - b * model_output
    if config.prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {config.prediction_type!r}")


class Scheduler(abc.ABC):
    """The numpy scheduler contract, after diffusers.

    `set_timesteps(n)` fills `timesteps`; the loop scales the model input with `scale_model_input(x, t)`
    and advances with `step(model_output, t, x, rng)`. img2img starts part-way: `set_begin_index(i)` and
    `add_noise(x0, noise, i)`. Schedulers that draw fresh noise take it from the caller's `rng`.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.alphas_cumprod = alphas_cumprod(config)
        # alpha_bar past t = 0, where DDIM-style chains end: 1 (x_0 itself) or, as SD ships, alpha_bar_0.
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.num_inference_steps = 0
        self.step_index = 0

    def set_begin_index(self, index: int) -> None:
        self.step_index = index

    def scale_model_input(self, sample: np.ndarray, timestep) -> np.ndarray:
        return sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps for t = timesteps[index]."""
        alpha_bar = self.alphas_cumprod[int(self.timesteps[index])]
        return (np.sqrt(alpha_bar) * original + np.sqrt(1 - alpha_bar) * noise).astype(np.float32)

    @abc.abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> None: ...

    @abc.abstractmethod
    def step(self, model_output, timestep, sample, rng: np.random.Generator) -> np.ndarray: ...
