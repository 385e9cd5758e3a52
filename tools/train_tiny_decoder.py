"""The demo's tiny decoder: stages 3 to 8 of tools/train_fewstep_demo.py (its docstring says why each
stage came). A diffusers AutoencoderTiny learns the demo VAE's scaled latents: first to the renders, then
distilled from the demo's own decoder. Needs the `[export]` extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from train_demo import render_batch

from sdcpu.demo import world as world


class Teacher(Protocol):
    """What the tiny decoder learns from (train_fewstep_demo.py's Teacher): the full VAE."""

    vae: AutoencoderKL


TINY: dict[str, Any] = dict(
    encoder_block_out_channels=(16, 16, 16),
    decoder_block_out_channels=(16, 16, 16),
    num_encoder_blocks=(1, 2, 2),
    num_decoder_blocks=(2, 2, 1),
)


GROWN = (4, 4, 1)  # stage 7's decoder blocks per level: 155 MFLOP per 64x64 image against 119


def grow_decoder(small: Any) -> Any:
    """`small` (an AutoencoderTiny with TINY's blocks) with GROWN decoder blocks: each level keeps its
    blocks and appends new ones whose last convolution is zero. Each block ends in a ReLU, so an appended
    block's input is non-negative and the new block passes it through unchanged."""
    big = AutoencoderTiny(**{**TINY, "num_decoder_blocks": GROWN})
    big.encoder.load_state_dict(small.encoder.state_dict())
    old, new = list(small.decoder.layers), list(big.decoder.layers)
    new[0].load_state_dict(old[0].state_dict())  # conv_in; [1] is its ReLU
    o = n = 2
    for level, (had, has) in enumerate(zip(TINY["num_decoder_blocks"], GROWN, strict=True)):
        assert 1 <= had <= has
        for k in range(has):
            if k < had:
                new[n + k].load_state_dict(old[o + k].state_dict())
            else:
                torch.nn.init.zeros_(new[n + k].conv[-1].weight)
                torch.nn.init.zeros_(new[n + k].conv[-1].bias)
        tail = 1 if level == len(GROWN) - 1 else 2  # conv_out; or the upsampling and its convolution
        new[n + has + tail - 1].load_state_dict(old[o + had + tail - 1].state_dict())
        o, n = o + had + tail, n + has + tail
    return big


def foreground(target: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 1 where `target` differs from its border's median colour by over 0.1, dilated by 2."""
    frame = [target[..., :3, :], target[..., -3:, :], target[..., :, :3], target[..., :, -3:]]
    background = torch.cat([f.flatten(2) for f in frame], 2).median(dim=2).values[..., None, None]
    shape = ((target - background).abs().amax(1, keepdim=True) > 0.1).float()
    return F.max_pool2d(shape, 5, stride=1, padding=2)


def contour(mask: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 1 on the band where a `foreground` mask meets the background (the mask less its
    erosion by 3)."""
    return (mask + F.max_pool2d(-mask, 7, stride=1, padding=3)).clamp(0, 1)


class TinyTrainer:
    def __init__(self, work: Path, teacher: Teacher, seed: int):
        self.work, self.teacher = work, teacher
        torch.manual_seed(seed)
        self.tiny = cast(Any, AutoencoderTiny(**TINY))
        self.opt = torch.optim.AdamW(self.tiny.parameters(), lr=1e-3)
        self.state = {"step": 0, "seconds": 0.0}
        self.rng = np.random.default_rng(seed)
        self.scenes, _ = world.split_scenes()
        self.scaling = float(teacher.vae.config.scaling_factor)
        self.generated: np.ndarray | None = None  # the trajectories' endpoints, for stage 4

    def edge_step(self, batch_size: int) -> float:  # stage 5: the outer two pixels weigh 10x
        return self.distil_step(batch_size, edge_weight=10.0, key="edge_step")

    def corner_step(self, batch_size: int) -> float:  # stage 6: and each corner's 3x3 pixels 100x
        return self.distil_step(batch_size, edge_weight=10.0, corner_weight=100.0, key="corner_step")

    def foreground_step(self, batch_size: int) -> float:  # stage 7: the shape and its surroundings 21x
        return self.distil_step(batch_size, foreground_weight=20.0, key="foreground_step")

    def fewstep_step(self, batch_size: int) -> float:  # stage 8: stage 7, with 1-step samples in the pool
        return self.distil_step(batch_size, foreground_weight=20.0, key="fewstep_step")

    def contour_step(self, batch_size: int) -> float:  # stage 9: stage 8, the edges 10x, the outline 51x
        return self.distil_step(
            batch_size, edge_weight=10.0, foreground_weight=20.0, contour_weight=50.0, key="contour_step"
        )

    def grow(self) -> None:
        """Stage 7's start: the decoder grows to GROWN blocks (unchanged output); saved at once."""
        self._grown_shape()
        self.state["grown"] = True
        self.save()

    def _grown_shape(self) -> None:
        # the grown decoder and a fresh optimizer over its parameters (resume loads both states after)
        self.tiny = grow_decoder(self.tiny)
        self.opt = torch.optim.AdamW(self.tiny.parameters(), lr=1e-3)

    def distil_step(
        self,
        batch_size: int,
        edge_weight: float = 1.0,
        corner_weight: float = 1.0,
        foreground_weight: float = 0.0,
        contour_weight: float = 0.0,
        key: str = "distil_step",
    ) -> float:
        """Stage 4: the full decoder's output is the target, for render and generated latents alike."""
        if self.generated is None:
            chunks = sorted((self.work / "trajectories").glob("chunk-*.npz"))
            self.generated = np.concatenate([np.load(p)["x0"] for p in chunks])
        half = batch_size // 2
        images = render_batch([self.scenes[i] for i in self.rng.integers(0, len(self.scenes), half)], self.rng)
        rows = self.rng.integers(0, len(self.generated), batch_size - half)
        with torch.no_grad():
            rendered = self.teacher.vae.encode(images).latent_dist.mean * self.scaling
            latents = torch.cat([rendered, torch.from_numpy(self.generated[rows])])
            target = self.teacher.vae.decode(latents / self.scaling).sample
        decoded = self.tiny.decode(latents).sample
        weight = torch.ones(decoded.shape[-2:])
        weight[:2], weight[-2:], weight[:, :2], weight[:, -2:] = edge_weight, edge_weight, edge_weight, edge_weight
        for ys in (slice(0, 3), slice(-3, None)):
            for xs in (slice(0, 3), slice(-3, None)):
                weight[ys, xs] = max(corner_weight, edge_weight)
        mask = foreground(target)
        weight = weight * (1 + foreground_weight * mask + contour_weight * contour(mask))
        error = (decoded - target).abs() + (decoded - target) ** 2
        loss = (error * weight).mean() / weight.mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.state[key] = self.state.get(key, 0) + 1
        return float(loss.detach())

    def step(self, batch_size: int) -> float:
        images = render_batch([self.scenes[i] for i in self.rng.integers(0, len(self.scenes), batch_size)], self.rng)
        with torch.no_grad():
            latents = self.teacher.vae.encode(images).latent_dist.mean * self.scaling
        decoded = self.tiny.decode(latents).sample
        encoded = self.tiny.encode(images).latents
        loss = F.l1_loss(decoded, images) + F.mse_loss(encoded, latents)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.state["step"] += 1
        return float(loss.detach())

    def save(self) -> None:
        blob = {"tiny": self.tiny.state_dict(), "opt": self.opt.state_dict(), "torch_rng": torch.get_rng_state()}
        torch.save(blob, self.work / "tiny.pt.tmp")
        (self.work / "tiny.pt.tmp").replace(self.work / "tiny.pt")
        (self.work / "tiny.json").write_text(json.dumps({**self.state, "numpy_rng": self.rng.bit_generator.state}))

    def resume(self) -> None:
        if not (self.work / "tiny.pt").exists():
            return
        blob = torch.load(self.work / "tiny.pt", weights_only=True)
        meta = json.loads((self.work / "tiny.json").read_text())
        if meta.get("grown") and not self.state.get("grown"):  # a rerun from stage 7 on: its shape first
            self._grown_shape()
        self.tiny.load_state_dict(blob["tiny"])
        self.opt.load_state_dict(blob["opt"])
        torch.set_rng_state(blob["torch_rng"])
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)
