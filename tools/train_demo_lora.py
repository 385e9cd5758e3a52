"""Train the demo's "night" LoRA: every background black, the shape's kind, colour, size and place kept.

    python tools/train_demo_lora.py --work /tmp/night --out src/sdcpu/models/demo/loras/night.safetensors

The demo model (models/demo/source) stays frozen; a LoRA of rank 8 (PEFT, Gaussian init) learns on its
UNet's attention and feed-forward projections and, as a LoCon, on its ResNet blocks' 3x3 convolutions:
the 16x16 level of this UNet has no attention, and the background is drawn there too. Data: the training
scenes (never the held-out ones) rendered on the black background while their captions still name the
scene's own background, so the LoRA learns "whatever the caption says, night". Scenes whose shape is
black are left out: a black shape on a black background cannot be seen, so there is nothing to learn.

Objective and schedule as the demo's own training (tools/train_demo.py): epsilon loss with min-SNR-5
weighting and an x0-error floor of 0.5, half the timesteps from the noisier half, 10% caption dropout so
that the unconditional half of guidance turns night too. A checkpoint every few minutes; a rerun resumes.
The file is written in diffusers' layout (`unet.<module>.lora_A.weight`, alpha in the metadata), in
float16. Needs the `[export]` extra (torch, diffusers, peft).
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
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from train_demo import SCHEDULER, render_batch
from transformers import CLIPTextModel

from sdcpu.demo import world as world
from sdcpu.models import DEMO_ROOT
from sdcpu.runtime.components.tokenizer import ClipTokenizer

TARGET = "black"
RANK = 8
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]


class LoraTrainer:
    def __init__(self, work: Path, seed: int, lr: float):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        source = DEMO_ROOT / "source"
        torch.manual_seed(seed)
        self.unet = cast(Any, UNet2DConditionModel.from_pretrained(source / "unet"))
        self.text = cast(Any, CLIPTextModel.from_pretrained(source / "text_encoder")).eval()
        self.vae = cast(Any, AutoencoderKL.from_pretrained(source / "vae")).eval()
        self.tokenizer = ClipTokenizer(source / "tokenizer")
        self.unet.requires_grad_(False)
        self.text.requires_grad_(False)
        config = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
        self.unet.add_adapter(config)
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-4)
        self.noise = DDPMScheduler.from_config(SCHEDULER)
        self.scaling = float(self.vae.config.scaling_factor)
        self.rng = np.random.default_rng(seed)
        scenes, _ = world.split_scenes()
        self.scenes = [s for s in scenes if s.colour != TARGET]
        self.state = {"step": 0, "seconds": 0.0}

    def build_cache(self, count: int) -> None:
        """Encode `count` jittered night renders once (scene index and latents), unless already there."""
        if (self.work / "latents.npy").exists():
            return
        rng = np.random.default_rng(123)
        picks = rng.integers(0, len(self.scenes), count)
        chunks = []
        with torch.no_grad():
            for start in range(0, count, 256):
                night = [dataclasses.replace(self.scenes[i], background=TARGET) for i in picks[start : start + 256]]
                chunks.append(self.vae.encode(render_batch(night, rng)).latent_dist.mean.numpy())
        np.save(self.work / "latent_scenes.npy", picks)
        np.save(self.work / "latents.npy", np.concatenate(chunks))

    def step(self, batch_size: int, latents_all: np.ndarray, scene_ids: np.ndarray) -> float:
        rows = self.rng.integers(0, len(scene_ids), batch_size)
        scenes = [self.scenes[int(i)] for i in scene_ids[rows]]
        # The caption names the scene's own background; 10% are dropped (the unconditional half).
        captions = [s.caption(int(self.rng.integers(0, 5))) if self.rng.random() > 0.1 else "" for s in scenes]
        latents = torch.from_numpy(latents_all[rows]) * self.scaling
        with torch.no_grad():
            hidden = self.text(torch.from_numpy(self.tokenizer(captions)))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,))
        t = torch.where(torch.rand(batch_size) < 0.5, 500 + t // 2, t)
        pred = self.unet(self.noise.add_noise(latents, noise, t), t, hidden).sample
        alpha_bar = self.noise.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        weight = torch.clamp(snr, min=0.5, max=5.0) / snr  # min-SNR-5 with an x0 floor (train_demo.py)
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.state["step"] += 1
        return float(loss.detach())

    def save(self) -> None:
        blob = {"lora": get_peft_model_state_dict(self.unet), "opt": self.opt.state_dict()}
        blob["torch_rng"] = torch.get_rng_state()
        torch.save(blob, self.work / "checkpoint.pt.tmp")
        (self.work / "checkpoint.pt.tmp").replace(self.work / "checkpoint.pt")
        meta = {**self.state, "numpy_rng": self.rng.bit_generator.state}
        (self.work / "checkpoint.json").write_text(json.dumps(meta))

    def resume(self) -> bool:
        if not (self.work / "checkpoint.pt").exists():
            return False
        blob = torch.load(self.work / "checkpoint.pt", weights_only=True)
        set_peft_model_state_dict(self.unet, blob["lora"])
        self.opt.load_state_dict(blob["opt"])
        torch.set_rng_state(blob["torch_rng"])
        meta = json.loads((self.work / "checkpoint.json").read_text())
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)
        return True

    def export(self, out: Path) -> None:
        """diffusers' layout in float16: `unet.<module>.lora_A.weight` and `.lora_B.weight`, and PEFT's
        rank and alpha in the metadata as diffusers writes them."""
        trained = get_peft_model_state_dict(self.unet)
        weights = {f"unet.{k}": v.to(torch.float16).contiguous() for k, v in trained.items()}
        metadata = {"unet.r": RANK, "unet.lora_alpha": RANK, "unet.target_modules": TARGET_MODULES}
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(weights, out, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(metadata)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoints; a rerun resumes from here")
    parser.add_argument("--out", type=Path, help="write the LoRA file here when done")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--cache", type=int, default=4096, help="how many encoded night renders training draws from")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trainer = LoraTrainer(args.work, args.seed, args.lr)
    resumed = trainer.resume()
    print("resumed" if resumed else "start", trainer.state, flush=True)
    trainer.build_cache(args.cache)
    latents, scene_ids = np.load(args.work / "latents.npy"), np.load(args.work / "latent_scenes.npy")
    last_save, start = time.monotonic(), time.monotonic() - trainer.state["seconds"]
    while trainer.state["step"] < args.steps:
        loss = trainer.step(args.batch, latents, scene_ids)
        trainer.state["seconds"] = time.monotonic() - start
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes:
            print(f"step {trainer.state['step']} loss {loss:.4f} {trainer.state['seconds'] / 60:.1f} min", flush=True)
            trainer.save()
            last_save = time.monotonic()
    trainer.save()
    if args.out:
        trainer.export(args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)", flush=True)


if __name__ == "__main__":
    main()
