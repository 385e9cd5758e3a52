"""Euler's method on the probability-flow ODE (Karras et al., https://arxiv.org/abs/2206.00364, Alg. 1
with gamma = 0): dx/dsigma = (x - x0_hat) / sigma, so x_next = x + (sigma_next - sigma) (x - x0_hat) / sigma.

The model sees x / sqrt(sigma^2 + 1) (its training input scale) at the fractional timestep of sigma.
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.schedulers.common import Scheduler, SchedulerConfig, karras_sigmas, sigma_to_t, spacing


def sigma_schedule(config: SchedulerConfig, alphas_cumprod: np.ndarray, n: int, karras: bool = False):
    """(timesteps, sigmas) for the k-diffusion schedulers: sigmas has n + 1 entries, ending at 0."""
    total = config.num_train_timesteps
    kind = spacing(config, "linspace")
    timesteps: np.ndarray
    if kind == "linspace":
        timesteps = np.linspace(0, total - 1, n, dtype=np.float64)[::-1].copy()
    elif kind == "leading":
        timesteps = (np.arange(0, n) * (total // n)).round()[::-1].astype(np.float32) + config.steps_offset
    elif kind == "trailing":
        timesteps = np.arange(total, 0, -total / n).round().astype(np.float32) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {kind!r}")
    train_sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    if karras:
        sigmas = karras_sigmas(float(sigmas[-1]), float(sigmas[0]), n)
        timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return timesteps.astype(np.float32), sigmas


def initial_sigma(config: SchedulerConfig, sigmas: np.ndarray) -> float:
    # The starting noise has std sigma_max (x = x0 + sigma eps); diffusers uses sqrt(sigma^2 + 1)
    # for "leading" spacing, and we follow it so that seeds give diffusers' images.
    top = float(sigmas.max())
    return top if spacing(config, "linspace") in ("linspace", "trailing") else (top**2 + 1) ** 0.5


class EulerDiscreteScheduler(Scheduler):
    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        self.timesteps, self.sigmas = sigma_schedule(self.config, self.alphas_cumprod, num_inference_steps)
        self.init_noise_sigma = initial_sigma(self.config, self.sigmas)
        self.step_index = 0

    def scale_model_input(self, sample, timestep):
        sigma = self.sigmas[self.step_index]
        return (sample / np.sqrt(sigma**2 + 1)).astype(np.float32)

    def add_noise(self, original, noise, index):
        return (original + noise * self.sigmas[index]).astype(np.float32)

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        x0 = denoised(self.config, model_output, sample, sigma)
        self.step_index += 1
        return (sample + (sigma_next - sigma) * (sample - x0) / sigma).astype(np.float32)


def denoised(config: SchedulerConfig, model_output, sample, sigma):
    """x0_hat in k-diffusion's parametrisation x = x0 + sigma eps (sample is the unscaled x)."""
    if config.prediction_type == "epsilon":
        return sample - sigma * model_output
    if config.prediction_type == "v_prediction":
        # c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1 / (sigma^2 + 1) (Karras et al., table 1 for v).
        return model_output * (-sigma / np.sqrt(sigma**2 + 1)) + sample / (sigma**2 + 1)
    raise ValueError(f"unknown prediction_type {config.prediction_type!r}")
