"""The UNet runner: one call per denoising step, returning the guided noise prediction.

It owns what the denoising loop should not have to know (as openvino.genai's UNetInference does):
classifier-free guidance as one batch of [unconditional, conditional] (or batch-1 calls under a
low-memory policy), DeepCache's deep features, and the timestep's form: float32 (graphs that store it as
int64 are loaded to take float32, see `unet_interfaces`), one per batch item or a scalar as the graph
declares.

Its inputs come named, as the graph names them, each with a negative and a positive half
(`GuidedInput`): the family's prompt embeddings (SD: `encoder_hidden_states`; SDXL adds `text_embeds`
and `time_ids`, whose halves differ too) and the task's per-image inputs (the upscaler's
`class_labels`, the same in both halves). Hooks (`UNetHook`) add inputs computed at each step from the
sample, the timestep and those inputs: an extra network's residuals, such as ControlNet's.

Hooks are told whether a call holds both halves of a guided batch, whose sample and timestep are then
the same rows twice: ControlNet's computes what depends on those alone once (engines/passes/shared_rows.py).
The UNet itself is fed whole: measured, the same rewrite made its step no faster (docs/speed.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sdcpu.format.manifest import Manifest
from sdcpu.runtime.engines import GraphInterface, Model
from sdcpu.runtime.memory import MemoryPolicy


def unet_interfaces(manifest: Manifest) -> dict[str, GraphInterface]:
    """What the runner asks of the UNet graphs when they are loaded: a float32 timestep, and the whole
    UNet's deep features (a tensor named inside it) where the folder has DeepCache's shallow pass. (And
    depth2img's DPT compiles with dynamic shapes, see GraphInterface.)"""
    deep = tuple(manifest.components["unet"].get("inner_outputs", [])) if "unet_shallow" in manifest.components else ()
    return {
        "unet": GraphInterface(outputs=deep, float_inputs=("timestep",)),
        "unet_shallow": GraphInterface(float_inputs=("timestep",)),
        "depth_estimator": GraphInterface(dynamic=True),
    }


@dataclass(frozen=True)
class GuidedInput:
    """One named UNet input for the unconditional (`negative`) and the conditional (`positive`) half of a
    guided batch, one row per image; `negative` is None where guidance is off (it is not computed)."""

    negative: np.ndarray | None
    positive: np.ndarray

    @classmethod
    def same(cls, value: np.ndarray) -> GuidedInput:
        """An input the prompt does not change: the same rows in both halves."""
        return cls(value, value)

    def join(self, guided: bool) -> np.ndarray:
        """The rows as the batch has them: [negative, positive] when guided, else [positive]."""
        if not guided:
            return self.positive
        assert self.negative is not None, "a guided batch needs the negative half"
        return np.concatenate([self.negative, self.positive])


@dataclass(frozen=True)
class HookCall:
    """Where a UNet call stands: the loop's `step` (from 0) of `steps`, which of its rows belong to the
    unconditional half of a guided batch (`negative`, one bool per row), and whether the call holds both
    halves, whose sample and timestep are then the same rows twice (`repeated`)."""

    step: int
    steps: int
    negative: np.ndarray
    repeated: bool = False


class UNetHook(Protocol):
    """Extra UNet inputs for one call, from its `sample` rows, timestep `t`, the other `inputs` of those
    rows (joined halves: negative rows first when guided) and where the call stands. ControlNet's
    residuals are one (runtime/controlnet/)."""

    def __call__(
        self, sample: np.ndarray, t: float, inputs: Mapping[str, np.ndarray], call: HookCall
    ) -> dict[str, np.ndarray]: ...


class UNetRunner:
    """For one generation: `inputs` are the named UNet inputs besides the sample and timestep (prompt
    embeddings, the task's), joined per guidance (`guidance` > 1 guides). `deep_cache`: the whole UNet
    every N-th step, the shallow pass between. `hooks`: inputs computed at every call (UNetHook)."""

    def __init__(
        self,
        unet: Model,
        unet_shallow: Model | None,
        memory: MemoryPolicy,
        inputs: Mapping[str, GuidedInput],
        guidance: float,
        deep_cache: int = 1,
        timestep_shape: tuple[int, ...] = (-1,),
        hooks: Sequence[UNetHook] = (),
        steps: int = 0,
    ):
        self.unet, self.unet_shallow, self.memory = unet, unet_shallow, memory
        self.timestep_shape = timestep_shape  # as the graph declares it; -1: one per batch item
        self.guidance, self.deep_cache, self.hooks = guidance, deep_cache, tuple(hooks)
        self.steps = steps  # the loop's number of steps, which hooks are told
        self.guided = guidance > 1.0  # classifier-free guidance, as diffusers: off for guidance <= 1
        self.inputs = {name: value.join(self.guided) for name, value in inputs.items()}
        self._deep: np.ndarray | None = None

    def __call__(self, sample: np.ndarray, t: float, step: int) -> np.ndarray:
        """eps = eps_u + w (eps_c - eps_u) (Ho & Salimans, https://arxiv.org/abs/2207.12598) for the
        scaled latents `sample` at timestep `t`, the `step`-th of the loop (from 0)."""
        batch = np.concatenate([sample, sample]) if self.guided else sample
        # DeepCache (Ma et al., https://arxiv.org/abs/2312.00858, uniform 1:N): only every N-th step runs
        # the whole UNet; the steps between reuse its deep features and run the outermost level alone.
        reuse = self._deep if step % self.deep_cache else None
        eps, self._deep = self._predict(batch, t, step, reuse)
        if not self.guided:
            return eps
        eps_uncond, eps_text = np.split(eps, 2)
        return eps_uncond + np.float32(self.guidance) * (eps_text - eps_uncond)

    def _predict(
        self, sample: np.ndarray, t: float, step: int, deep: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # Given deep features: the shallow pass around them. Otherwise the whole UNet, which also returns
        # fresh ones when DeepCache is on (only then are they fetched). The memory policy may split the
        # batch: the same arithmetic with fewer activations alive at once.
        keep = self.deep_cache > 1
        parts = []
        negative = np.arange(len(sample)) < (len(sample) // 2 if self.guided else 0)
        for rows in self.memory.batches(len(sample)):
            inputs = {"sample": sample[rows]} | {name: value[rows] for name, value in self.inputs.items()}
            inputs["timestep"] = self._timestep(t, len(inputs["sample"]))
            call = HookCall(
                step, self.steps, negative[rows], repeated=self.guided and len(inputs["sample"]) == len(sample)
            )
            for hook in self.hooks:
                inputs |= hook(inputs["sample"], t, inputs, call)
            if deep is not None and self.unet_shallow is not None:
                parts.append([self.unet_shallow(**inputs, deep_features=deep[rows])])
            else:
                parts.append(self.unet.outputs(**inputs) if keep else [self.unet(**inputs)])
        joined = [np.concatenate(part) if len(part) > 1 else part[0] for part in zip(*parts, strict=True)]
        return joined[0], joined[1] if len(joined) > 1 else deep

    def _timestep(self, t: float, batch: int) -> np.ndarray:
        # One per batch item, or the single one (shape [1] or a scalar) that the graph broadcasts.
        shape = tuple(batch if size == -1 else size for size in self.timestep_shape)
        return np.full(shape, t, dtype=np.float32)

    def release(self) -> None:
        """After the loop: free the UNets as the memory policy says."""
        self.memory.free(self.unet)
        if self.unet_shallow is not None:
            self.memory.free(self.unet_shallow)
