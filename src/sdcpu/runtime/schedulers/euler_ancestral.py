"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`, Karras et al. sec. 3 with eta = 1).

Each step goes down to sigma_down by Euler, then adds fresh noise of std sigma_up, where
sigma_up = sqrt(s_next^2 (s^2 - s_next^2) / s^2) and sigma_down = sqrt(s_next^2 - sigma_up^2).
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.schedulers.euler import EulerDiscreteScheduler, denoised


class EulerAncestralDiscreteScheduler(EulerDiscreteScheduler):
    """Euler's timesteps, sigmas and input scaling; only the step differs."""

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        assert rng is not None, "euler-a draws noise at every step: pass the generator"
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        x0 = denoised(self.config, model_output, sample, sigma)
        sigma_up = np.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        sigma_down = np.sqrt(sigma_next**2 - sigma_up**2)
        x = sample + (sigma_down - sigma) * (sample - x0) / sigma
        noise = rng.standard_normal(model_output.shape, dtype=np.float32)
        self.step_index += 1
        return (x + noise * sigma_up).astype(np.float32)
