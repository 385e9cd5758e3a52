"""DDIM (Song et al., https://arxiv.org/abs/2010.02502), deterministic (eta = 0).

Eq. 12 with sigma_t = 0: x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat.
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.schedulers.common import Scheduler, discrete_timesteps, predicted_x0


class DDIMScheduler(Scheduler):
    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        self.timesteps = discrete_timesteps(self.config, num_inference_steps, "leading")
        self.step_index = 0

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0 = predicted_x0(self.config, model_output, sample, alpha_bar)
        # eps_hat recovered from x0_hat so that epsilon and v models share one update.
        eps = (sample - np.sqrt(alpha_bar) * x0) / np.sqrt(1 - alpha_bar)
        self.step_index += 1
        return (np.sqrt(alpha_bar_prev) * x0 + np.sqrt(1 - alpha_bar_prev) * eps).astype(np.float32)
