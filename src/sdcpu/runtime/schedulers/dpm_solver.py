"""DPM-Solver++(2M) (Lu et al., https://arxiv.org/abs/2211.01095, Alg. 2), data prediction, midpoint form.

With lambda = log(alpha / sigma) and h = lambda_t - lambda_s, one step is
x_t = (sigma_t / sigma_s) x_s - alpha_t (e^-h - 1) (D0 + D1 / 2), D0 = x0_hat(s), D1 = (D0 - x0_hat(s-1)) / r,
r = h_prev / h. The first step (no history) and the last step (to sigma = 0) are first order.
`karras=True` spaces the sigmas as Karras et al. eq. 5 ("DPM++ 2M Karras").
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.schedulers.common import (
    Scheduler,
    SchedulerConfig,
    discrete_timesteps,
    karras_sigmas,
    predicted_x0,
    sigma_to_t,
    spacing,
)


class DPMSolverMultistepScheduler(Scheduler):
    def __init__(self, config: SchedulerConfig, karras: bool = False):
        super().__init__(config)
        self.karras = karras

    def set_timesteps(self, num_inference_steps: int) -> None:
        n, total = num_inference_steps, self.config.num_train_timesteps
        if spacing(self.config, "linspace") == "linspace":
            # n + 1 points with the last (t = 0) dropped, as diffusers does for this solver.
            timesteps = np.linspace(0, total - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing(self.config, "linspace") == "leading":
            step = total // (n + 1)
            timesteps = (np.arange(0, n + 1) * step).round()[::-1][:-1].astype(np.int64) + self.config.steps_offset
        else:
            timesteps = discrete_timesteps(self.config, n, "trailing")
        train_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        if self.karras:
            sigmas = karras_sigmas(float(train_sigmas[0]), float(train_sigmas[-1]), n)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas)).round().astype(np.int64)
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = timesteps
        self.num_inference_steps = n
        self.step_index = 0
        self._previous_x0: np.ndarray | None = None

    def add_noise(self, original, noise, index):
        alpha, sigma = _alpha_sigma(self.sigmas[index])
        return (alpha * original + sigma * noise).astype(np.float32)

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        i = self.step_index
        alpha_s, sigma_s = _alpha_sigma(self.sigmas[i])
        alpha_t, sigma_t = _alpha_sigma(self.sigmas[i + 1])
        x0 = predicted_x0(self.config, model_output, sample, alpha_s**2)
        last = i == len(self.timesteps) - 1  # final sigma is 0: lower_order_final
        with np.errstate(divide="ignore"):
            h = np.log(alpha_t / sigma_t) - np.log(alpha_s / sigma_s)
        if self._previous_x0 is None or last:
            d = x0  # first order = DDIM in data-prediction form
        else:
            alpha_p, sigma_p = _alpha_sigma(self.sigmas[i - 1])
            r = (np.log(alpha_s / sigma_s) - np.log(alpha_p / sigma_p)) / h
            d = x0 + 0.5 * (x0 - self._previous_x0) / r
        self._previous_x0 = x0
        self.step_index += 1
        return ((sigma_t / sigma_s) * sample - alpha_t * (np.exp(-h) - 1.0) * d).astype(np.float32)


def _alpha_sigma(sigma_k: np.float32) -> tuple[np.float32, np.float32]:
    # From k-diffusion's sigma to the VP pair: alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma alpha_t.
    alpha = np.float32(1.0) / np.sqrt(sigma_k**2 + np.float32(1.0))
    return alpha, sigma_k * alpha
