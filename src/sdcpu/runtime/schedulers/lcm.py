"""Latent Consistency Model sampling (Luo et al., https://arxiv.org/abs/2310.04378, Alg. 1).

The model's x0 estimate is mapped through the consistency boundary condition
f(x, t) = c_skip(t) x + c_out(t) x0_hat with c_skip = s^2 / ((10 t)^2 + s^2), c_out = 10 t / sqrt((10 t)^2 + s^2),
s = 0.5; then noise is re-injected down to the next timestep (none after the last).
Timesteps are drawn from the 50-step distillation schedule, so at most 50 steps are allowed.
"""

from __future__ import annotations

import numpy as np

from sdcpu.errors import SdcpuError
from sdcpu.runtime.schedulers.common import Scheduler, predicted_x0

ORIGINAL_STEPS = 50
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5


class LCMScheduler(Scheduler):
    def set_timesteps(self, num_inference_steps: int) -> None:
        if num_inference_steps > ORIGINAL_STEPS:
            raise SdcpuError(f"lcm takes at most {ORIGINAL_STEPS} steps (typically 4-8); got {num_inference_steps}")
        k = self.config.num_train_timesteps // ORIGINAL_STEPS
        origin = (np.arange(1, ORIGINAL_STEPS + 1) * k - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[picks].copy()
        self.num_inference_steps = num_inference_steps
        self.step_index = 0

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        assert rng is not None, "lcm draws noise at every step: pass the generator"
        i, t = self.step_index, int(timestep)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        alpha_bar, alpha_bar_prev = self.alphas_cumprod[t], self.alphas_cumprod[prev_t]
        scaled = t * TIMESTEP_SCALING
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        x0 = predicted_x0(self.config, model_output, sample, alpha_bar)
        denoised = c_out * x0 + c_skip * sample
        self.step_index += 1
        if i == self.num_inference_steps - 1:
            return denoised.astype(np.float32)
        noise = rng.standard_normal(model_output.shape, dtype=np.float32)
        return (np.sqrt(alpha_bar_prev) * denoised + np.sqrt(1 - alpha_bar_prev) * noise).astype(np.float32)
