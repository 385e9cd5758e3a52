"""The UNet runner: one call per denoising step, returning the guided noise prediction.

It owns what the denoising loop should not have to know (as openvino.genai's UNetInference does):
the UNet's input names, classifier-free guidance as one batch of [unconditional, conditional] (or
batch-1 calls under a low-memory policy), and DeepCache's deep features.
"""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.backends import Model
from sdcpu.runtime.memory import MemoryPolicy


class UNetRunner:
    """For one generation: `embeddings` are [negative x N, prompt x N] with guidance (`guidance` > 1),
    else [prompt x N]. `deep_cache`: the whole UNet every N-th step, the shallow pass between."""

    def __init__(
        self,
        unet: Model,
        unet_shallow: Model,
        memory: MemoryPolicy,
        embeddings: np.ndarray,
        guidance: float,
        deep_cache: int = 1,
    ):
        self.unet, self.unet_shallow, self.memory = unet, unet_shallow, memory
        self.embeddings, self.guidance, self.deep_cache = embeddings, guidance, deep_cache
        self.guided = guidance > 1.0  # classifier-free guidance, as diffusers: off for guidance <= 1
        self._deep: np.ndarray | None = None

    def __call__(self, sample: np.ndarray, t: float, step: int) -> np.ndarray:
        """eps = eps_u + w (eps_c - eps_u) (Ho & Salimans, https://arxiv.org/abs/2207.12598) for the
        scaled latents `sample` at timestep `t`, the `step`-th of the loop (from 0)."""
        batch = np.concatenate([sample, sample]) if self.guided else sample
        timestep = np.full(len(batch), t, dtype=np.float32)
        # DeepCache (Ma et al., https://arxiv.org/abs/2312.00858, uniform 1:N): only every N-th step runs
        # the whole UNet; the steps between reuse its deep features and run the outermost level alone.
        reuse = self._deep if step % self.deep_cache else None
        eps, self._deep = self._predict(batch, timestep, reuse)
        if not self.guided:
            return eps
        eps_uncond, eps_text = np.split(eps, 2)
        return eps_uncond + np.float32(self.guidance) * (eps_text - eps_uncond)

    def _predict(
        self, sample: np.ndarray, timestep: np.ndarray, deep: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # Given deep features: the shallow pass around them. Otherwise the whole UNet, which also returns
        # fresh ones when DeepCache is on (only then are they fetched). The memory policy may split the
        # batch: the same arithmetic with fewer activations alive at once.
        keep = self.deep_cache > 1
        parts = []
        for rows in self.memory.batches(len(sample)):
            inputs = {"sample": sample[rows], "timestep": timestep[rows]}
            inputs["encoder_hidden_states"] = self.embeddings[rows]
            if deep is not None:
                parts.append([self.unet_shallow(**inputs, deep_features=deep[rows])])
            else:
                parts.append(self.unet.outputs(**inputs) if keep else [self.unet(**inputs)])
        joined = [np.concatenate(part) if len(part) > 1 else part[0] for part in zip(*parts, strict=True)]
        return joined[0], joined[1] if len(joined) > 1 else deep

    def release(self) -> None:
        """After the loop: free the UNets as the memory policy says."""
        self.memory.free(self.unet)
        self.memory.free(self.unet_shallow)
