"""PNDM in its PLMS form (Liu et al., https://arxiv.org/abs/2202.09778), as Stable Diffusion ships it.

Pseudo linear multistep: the noise estimates of the last four steps are combined with the
Adams-Bashforth weights (eq. 12: (55 e_t - 59 e_t-1 + 37 e_t-2 - 9 e_t-3) / 24), then moved along the
DDIM-like transfer phi (eq. 11). Like diffusers with `skip_prk_steps`, the first step is taken twice
(a second-order warm-up), so n steps run n + 1 model evaluations.
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.schedulers.common import Scheduler, discrete_timesteps


class PNDMScheduler(Scheduler):
    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        ts = discrete_timesteps(self.config, num_inference_steps, "leading")[::-1]
        # ascending t_0 < ... < t_n-1; the warm-up repeats the second-to-last (first visited twice).
        self.timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        self.step_index = 0
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._cur_sample: np.ndarray | None = None

    def step(self, model_output, timestep, sample, rng=None) -> np.ndarray:
        delta = self.config.num_train_timesteps // self.num_inference_steps
        t, prev_t = int(timestep), int(timestep) - delta
        if self._counter != 1:
            self._ets = [*self._ets[-3:], model_output]
        else:  # the warm-up's second half: step again from the same sample, t+delta -> t
            prev_t, t = t, t + delta
        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._cur_sample = sample
            eps = model_output
        elif len(ets) == 1 and self._counter == 1:
            assert self._cur_sample is not None
            eps, sample = (model_output + ets[-1]) / 2, self._cur_sample
        elif len(ets) == 2:
            eps = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            eps = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            eps = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        self._counter += 1
        self.step_index += 1
        return self._transfer(sample, t, prev_t, eps)

    def _transfer(self, sample, t: int, prev_t: int, eps) -> np.ndarray:
        # phi(x_t, eps, t, t-delta) of eq. 11, written as in diffusers (formula 9 of the paper).
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":
            eps = np.sqrt(a_t) * eps + np.sqrt(1 - a_t) * sample
        sample_coeff = np.sqrt(a_prev / a_t)
        denom = a_t * np.sqrt(1 - a_prev) + np.sqrt(a_t * (1 - a_t) * a_prev)
        return (sample_coeff * sample - (a_prev - a_t) * eps / denom).astype(np.float32)
