"""Train the demo's "edges" ControlNet: the control image is the edge map of the shape to draw (the canny
annotator's output on a picture of it), which sets the shape, its size and its place; the caption still
sets the colours.

    python tools/train_demo_controlnet.py --work /tmp/edges --out /tmp/edges-diffusers

The demo model (models/demo/source) stays frozen. The ControlNet starts as a copy of its UNet's encoder
(diffusers' `ControlNetModel.from_unet`, zero convolutions at zero, as Zhang et al. train it) with a
conditioning embedding of two stride-2 steps: the demo's VAE halves 64 pixels twice, to 16 latents.

Data: the training scenes (never the held-out ones), rendered with jitter, and the edge map of each
render by sdcpu's own canny annotator (runtime/controlnet/annotators.py). The caption is the scene's own
(40%), names its colours alone (30%: "a red on a blue background"), or names another shape and place
(20%), so that the control, not the words, decides where and what; 10% are empty (the unconditional
half of guidance), all with the control image, as the ControlNet paper drops prompts. Objective and
schedule as the demo's own (tools/train_demo.py). A checkpoint every few minutes; a rerun resumes.
Needs the `[export]` extra (torch, diffusers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from train_demo import SCHEDULER
from transformers import CLIPTextModel

from sdcpu.demo import world as world
from sdcpu.models import DEMO_ROOT
from sdcpu.runtime.components.tokenizer import ClipTokenizer
from sdcpu.runtime.controlnet.annotators import canny

EMBEDDING = (16, 32, 64)  # the conditioning embedding's widths: two stride-2 steps, 64 pixels to 16 latents


def colour_caption(scene: world.Scene) -> str:
    """A caption naming the colours alone."""
    return f"a {scene.colour} on a {scene.background} background"


def edge_map(image: Any) -> np.ndarray:
    """The control image of a render: canny's edges, (64, 64) uint8."""
    return np.asarray(canny(image))[..., 0].copy()


class ControlNetTrainer:
    def __init__(self, work: Path, seed: int, lr: float):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        source = DEMO_ROOT / "source"
        torch.manual_seed(seed)
        self.unet = cast(Any, UNet2DConditionModel.from_pretrained(source / "unet")).eval()
        self.text = cast(Any, CLIPTextModel.from_pretrained(source / "text_encoder")).eval()
        self.vae = cast(Any, AutoencoderKL.from_pretrained(source / "vae")).eval()
        self.tokenizer = ClipTokenizer(source / "tokenizer")
        for frozen in (self.unet, self.text, self.vae):
            frozen.requires_grad_(False)
        self.controlnet = cast(Any, ControlNetModel.from_unet(self.unet, conditioning_embedding_out_channels=EMBEDDING))
        self.controlnet.train()
        self.opt = torch.optim.AdamW(self.controlnet.parameters(), lr=lr, weight_decay=1e-4)
        self.noise = DDPMScheduler.from_config(SCHEDULER)
        self.scaling = float(self.vae.config.scaling_factor)
        self.rng = np.random.default_rng(seed)
        self.scenes, _ = world.split_scenes()
        self.state = {"step": 0, "seconds": 0.0}

    def build_cache(self, count: int) -> None:
        """Render `count` jittered scenes once: their latents and edge maps, and which scene each is."""
        if (self.work / "latents.npy").exists():
            return
        rng = np.random.default_rng(123)
        picks = rng.integers(0, len(self.scenes), count)
        latents, edges = [], []
        with torch.no_grad():
            for start in range(0, count, 256):
                images = [world.render(self.scenes[i], rng) for i in picks[start : start + 256]]
                pixels = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
                encoded = self.vae.encode(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).latent_dist.mean
                latents.append(encoded.numpy())
                edges.append(np.stack([edge_map(image) for image in images]))
        np.save(self.work / "scenes.npy", picks)
        np.save(self.work / "latents.npy", np.concatenate(latents))
        np.save(self.work / "edges.npy", np.concatenate(edges))

    def caption(self, scene: world.Scene) -> str:
        draw = self.rng.random()
        if draw < 0.1:
            return ""
        if draw < 0.5:
            return scene.caption(int(self.rng.integers(0, len(world.TEMPLATES))))
        if draw < 0.8:
            return colour_caption(scene)
        other = dataclasses.replace(
            scene,
            shape=str(self.rng.choice(world.SHAPES)),
            position=str(self.rng.choice(list(world.POSITIONS))),
        )
        return other.caption(int(self.rng.integers(0, len(world.TEMPLATES))))

    def step(self, batch_size: int, cache: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        scene_ids, latents_all, edges_all = cache
        rows = self.rng.integers(0, len(scene_ids), batch_size)
        captions = [self.caption(self.scenes[int(i)]) for i in scene_ids[rows]]
        latents = torch.from_numpy(latents_all[rows]) * self.scaling
        control = torch.from_numpy(edges_all[rows].astype(np.float32) / 255)[:, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            hidden = self.text(torch.from_numpy(self.tokenizer(captions)))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,))
        t = torch.where(torch.rand(batch_size) < 0.5, 500 + t // 2, t)
        noisy = self.noise.add_noise(latents, noise, t)
        down, mid = self.controlnet(noisy, t, hidden, controlnet_cond=control, return_dict=False)
        pred = self.unet(
            noisy, t, hidden, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        alpha_bar = self.noise.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        weight = torch.clamp(snr, min=0.5, max=5.0) / snr  # min-SNR-5 with an x0 floor (train_demo.py)
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.controlnet.parameters(), 1.0)
        self.opt.step()
        self.state["step"] += 1
        return float(loss.detach())

    def save(self) -> None:
        blob = {"controlnet": self.controlnet.state_dict(), "opt": self.opt.state_dict()}
        blob["torch_rng"] = torch.get_rng_state()
        torch.save(blob, self.work / "checkpoint.pt.tmp")
        (self.work / "checkpoint.pt.tmp").replace(self.work / "checkpoint.pt")
        meta = {**self.state, "numpy_rng": self.rng.bit_generator.state}
        (self.work / "checkpoint.json").write_text(json.dumps(meta))

    def resume(self) -> bool:
        if not (self.work / "checkpoint.pt").exists():
            return False
        blob = torch.load(self.work / "checkpoint.pt", weights_only=True)
        self.controlnet.load_state_dict(blob["controlnet"])
        self.opt.load_state_dict(blob["opt"])
        torch.set_rng_state(blob["torch_rng"])
        meta = json.loads((self.work / "checkpoint.json").read_text())
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)
        return True

    def export(self, out: Path) -> None:
        """A diffusers ControlNetModel folder, float16 weights."""
        self.controlnet.eval().to(torch.float16).save_pretrained(out)
        self.controlnet.to(torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoints; a rerun resumes from here")
    parser.add_argument("--out", type=Path, help="write the diffusers ControlNet folder here when done")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--cache", type=int, default=8192, help="how many renders training draws from")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trainer = ControlNetTrainer(args.work, args.seed, args.lr)
    resumed = trainer.resume()
    print("resumed" if resumed else "start", trainer.state, flush=True)
    trainer.build_cache(args.cache)
    cache = tuple(np.load(args.work / f"{name}.npy") for name in ("scenes", "latents", "edges"))
    last_save, start = time.monotonic(), time.monotonic() - trainer.state["seconds"]
    while trainer.state["step"] < args.steps:
        loss = trainer.step(args.batch, cast(Any, cache))
        trainer.state["seconds"] = time.monotonic() - start
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes:
            print(f"step {trainer.state['step']} loss {loss:.4f} {trainer.state['seconds'] / 60:.1f} min", flush=True)
            trainer.save()
            last_save = time.monotonic()
    trainer.save()
    if args.out:
        trainer.export(args.out)
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
