"""Train the bundled demo model: a tiny latent diffusion model with Stable Diffusion's own classes.

    python tools/train_demo.py --work /tmp/demo-train --out src/sdcpu/models/demo/source

Two stages, fixed seeds: (1) the VAE (diffusers AutoencoderKL, 4x downsampling, 4 latent channels)
on rendered scenes; (2) the UNet (UNet2DConditionModel) and text encoder (transformers CLIPTextModel)
jointly, with SD's epsilon objective and noise schedule and 10% caption dropout for classifier-free
guidance. A checkpoint is written every few minutes and a restarted run resumes from it. The result is
written as a diffusers folder (safetensors) that `sdcpu convert` reads like any SD checkpoint.
Needs the `[export]` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdcpu.demo import world as world
from sdcpu.demo.tokenizer import write_tokenizer
from sdcpu.export.convert import model_index
from sdcpu.runtime.components.tokenizer import ClipTokenizer

MAX_LENGTH = 16
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    norm_num_groups=8,
    block_out_channels=(16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    sample_size=world.SIZE,
)
# Attention only at 8x8 and 4x4 latents, where it is cheap; the 16x16 level is convolutions only.
UNET: dict[str, Any] = dict(
    sample_size=world.SIZE // 4,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    norm_num_groups=16,
    block_out_channels=(32, 64, 96),
    cross_attention_dim=64,
    attention_head_dim=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
TEXT: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    projection_dim=64,
    hidden_act="quick_gelu",
)


def render_batch(scenes: list[world.Scene], rng: np.random.Generator) -> torch.Tensor:
    """Jittered renders as (N, 3, 64, 64) in [-1, 1]."""
    pixels = np.stack([np.asarray(world.render(s, rng), dtype=np.float32) for s in scenes]) / 127.5 - 1.0
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2))


def batch(scenes: list[world.Scene], rng: np.random.Generator, size: int) -> tuple[torch.Tensor, list[str]]:
    picks = [scenes[i] for i in rng.integers(0, len(scenes), size)]
    captions = [s.caption(int(rng.integers(0, len(world.TEMPLATES)))) for s in picks]
    return render_batch(picks, rng), captions


class Trainer:
    def __init__(self, work: Path, seed: int):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        write_tokenizer(work / "tokenizer", world.vocabulary(), MAX_LENGTH)
        self.tokenizer = ClipTokenizer(work / "tokenizer")
        torch.manual_seed(seed)
        self.vae = cast(Any, AutoencoderKL(**VAE))
        self.unet = cast(Any, UNet2DConditionModel(**UNET))
        vocab = len(self.tokenizer.vocab)
        self.text: Any = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, **TEXT
            )
        )
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=1e-3)
        params = self.diffusion_params()
        self.opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
        # An exponential moving average of the weights samples better than the last iterate; it is what ships.
        self.ema = [p.detach().clone() for p in params]
        self.noise = DDPMScheduler.from_config(SCHEDULER)
        self.state = {"vae_step": 0, "decoder_step": 0, "step": 0, "scaling_factor": 1.0, "seconds": 0.0}
        self.rng = np.random.default_rng(seed)
        self.train_scenes, _ = world.split_scenes()
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        self.min_x0_weight = 0.0

    def diffusion_params(self) -> list[torch.nn.Parameter]:
        """What stage 2 trains (and averages): the UNet and the text encoder."""
        return [*self.unet.parameters(), *self.text.parameters()]

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        blob = {
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text": self.text.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.work / "checkpoint.pt.tmp"
        torch.save(blob, tmp)
        tmp.replace(self.work / "checkpoint.pt")
        meta = {**self.state, "numpy_rng": self.rng.bit_generator.state}
        (self.work / "checkpoint.json").write_text(json.dumps(meta))

    def resume(self) -> bool:
        if not (self.work / "checkpoint.pt").exists():
            return False
        blob = torch.load(self.work / "checkpoint.pt", weights_only=True)
        self.vae.load_state_dict(blob["vae"])
        self.unet.load_state_dict(blob["unet"])
        self.text.load_state_dict(blob["text"])
        self.vae_opt.load_state_dict(blob["vae_opt"])
        self.opt.load_state_dict(blob["opt"])
        self.ema = blob["ema"]
        torch.set_rng_state(blob["torch_rng"])
        meta = json.loads((self.work / "checkpoint.json").read_text())
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)
        return True

    def init_from(self, folder: Path, vae_steps: int, cache: int) -> None:
        """Continue from a trained diffusers folder (such as models/demo/source): its weights become the live
        and the EMA weights, the VAE stage is skipped and the latent cache rebuilt. Optimiser state starts anew."""
        from safetensors.torch import load_file

        self.vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"))
        self.unet.load_state_dict(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        self.text.load_state_dict(load_file(folder / "text_encoder" / "model.safetensors"))
        self.ema = [p.detach().clone() for p in self.diffusion_params()]
        scaling = json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"]
        self.state.update(vae_step=vae_steps, scaling_factor=scaling)
        self.build_latent_cache(cache)

    # -- stage 1: the VAE ----------------------------------------------------------------------
    def vae_step(self, batch_size: int) -> float:
        images, _ = batch(self.train_scenes, self.rng, batch_size)
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        self.vae_opt.zero_grad()
        loss.backward()
        self.vae_opt.step()
        self.state["vae_step"] += 1
        return float(loss.detach())

    def decoder_step(self, batch_size: int) -> float:
        """Sharpen the decoder with the encoder frozen: the latent space, and so the UNet trained on it, stay
        valid. L1 rather than MSE, since small shapes' corners are a few pixels that MSE lets blur away."""
        images, _ = batch(self.train_scenes, self.rng, batch_size)
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.mean
        loss = F.l1_loss(self.vae.decode(latents).sample, images)
        self.vae_opt.zero_grad()
        loss.backward()
        self.vae_opt.step()
        self.state["decoder_step"] += 1
        return float(loss.detach())

    def fix_scaling_factor(self) -> None:
        # SD's trick: scale latents to unit variance so the UNet sees the noise schedule it expects.
        with torch.no_grad():
            images, _ = batch(self.train_scenes, np.random.default_rng(0), 256)
            latents = self.vae.encode(images).latent_dist.mean
        self.state["scaling_factor"] = float(1.0 / latents.std())

    # -- stage 2: UNet + text encoder ------------------------------------------------------------
    def build_latent_cache(self, count: int) -> None:
        """Encode `count` jittered renders once, so UNet steps skip rendering and the VAE encoder."""
        rng = np.random.default_rng(123)
        picks = rng.integers(0, len(self.train_scenes), count)
        chunks = []
        with torch.no_grad():
            for start in range(0, count, 256):
                images = render_batch([self.train_scenes[i] for i in picks[start : start + 256]], rng)
                chunks.append(self.vae.encode(images).latent_dist.mean.numpy())
        np.save(self.work / "latents.npy", np.concatenate(chunks))
        np.save(self.work / "latent_scenes.npy", picks)

    def diffusion_step(self, batch_size: int) -> float:
        if self._cache is None:
            self._cache = (np.load(self.work / "latents.npy"), np.load(self.work / "latent_scenes.npy"))
        latents_all, scene_ids = self._cache
        rows = self.rng.integers(0, len(scene_ids), batch_size)
        scenes = [self.train_scenes[int(i)] for i in scene_ids[rows]]
        # caption dropout (10%) teaches the unconditional prediction that classifier-free guidance needs
        captions = [s.caption(int(self.rng.integers(0, 5))) if self.rng.random() > 0.1 else "" for s in scenes]
        # 15% of captions leave the size out, so that "a red circle on the left" also means something
        drop_size = self.rng.random(batch_size) < 0.15
        pairs = zip(captions, scenes, drop_size, strict=True)
        captions = [c.replace(f" {s.size} ", " ", 1) if drop else c for c, s, drop in pairs]
        latents = torch.from_numpy(latents_all[rows]) * self.state["scaling_factor"]
        ids = torch.from_numpy(self.tokenizer(captions))
        noise = torch.randn_like(latents)
        # Half the timesteps are drawn from the noisier half of the schedule: a flat-colour 16x16 latent's
        # composition (what the caption names) is decided there, the low-noise half only sharpens edges.
        t = torch.randint(0, 1000, (batch_size,))
        t = torch.where(torch.rand(batch_size) < 0.5, 500 + t // 2, t)
        noisy = self.noise.add_noise(latents, noise, t)
        pred = self.unet(noisy, t, self.text(ids)[0]).sample
        # min-SNR-5 weighting (Hang et al., https://arxiv.org/abs/2303.09556): w = min(SNR, 5) / SNR, i.e. the
        # error in x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) weighs min(SNR, 5). `min_x0_weight` raises that
        # weight to at least the floor at high noise, where the layout (the shape's position) is decided.
        alpha_bar = self.noise.alphas_cumprod[t]
        snr = alpha_bar / (1 - alpha_bar)
        weight = torch.clamp(snr, min=self.min_x0_weight, max=5.0) / snr
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion_params(), 1.0)
        self.opt.step()
        self.state["step"] += 1
        decay = min(0.999, (1 + self.state["step"]) / (10 + self.state["step"]))
        live = [p.detach() for p in self.diffusion_params()]
        torch._foreach_lerp_(self.ema, live, 1 - decay)
        return float(loss.detach())

    def text_sensitivity(self) -> float:
        """Relative change of the noise prediction when the caption is dropped (0 = text ignored)."""
        with torch.no_grad():
            images, captions = batch(self.train_scenes, np.random.default_rng(1), 16)
            latents = self.vae.encode(images).latent_dist.mean * self.state["scaling_factor"]
            t = torch.full((16,), 500)
            noisy = self.noise.add_noise(latents, torch.randn_like(latents), t)
            with_text = self.unet(noisy, t, self.text(torch.from_numpy(self.tokenizer(captions)))[0]).sample
            without = self.unet(noisy, t, self.text(torch.from_numpy(self.tokenizer([""] * 16)))[0]).sample
        return float((with_text - without).norm() / with_text.norm())

    def export(self, out: Path) -> None:
        import shutil

        out.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            for live, ema in zip(self.diffusion_params(), self.ema, strict=True):
                live.copy_(ema)
        self.vae.register_to_config(scaling_factor=self.state["scaling_factor"])
        self.vae.save_pretrained(out / "vae")
        self.unet.save_pretrained(out / "unet")
        self.text.save_pretrained(out / "text_encoder")
        shutil.copytree(self.work / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
        (out / "scheduler").mkdir(exist_ok=True)
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
        index = model_index(SCHEDULER["_class_name"])
        (out / "model_index.json").write_text(json.dumps(index, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoints; a rerun resumes from here")
    parser.add_argument("--out", type=Path, help="write the diffusers folder here when done")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=0, help="decoder-only steps after the VAE stage")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cache", type=int, default=16384, help="how many encoded renders UNet training draws from")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-x0-weight", type=float, default=0.0, help="floor of the x0-error weight")
    parser.add_argument("--init-from", type=Path, help="start from this trained diffusers folder (fine-tuning)")
    parser.add_argument("--lr", type=float, default=5e-4, help="UNet and text encoder learning rate")
    parser.add_argument("--cosine", action="store_true", help="decay the learning rate to 0 at --steps (cosine)")
    parser.add_argument("--export-only", action="store_true", help="write --out from the last checkpoint and stop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = Trainer(args.work, args.seed)
    trainer.min_x0_weight = args.min_x0_weight
    resumed = trainer.resume()
    if not resumed and args.init_from:
        trainer.init_from(args.init_from, args.vae_steps, args.cache)
    print("resumed" if resumed else f"start from {args.init_from or 'scratch'}", trainer.state, flush=True)
    if args.export_only:
        args.vae_steps = args.decoder_steps = args.steps = 0
    last_save, start = time.monotonic(), time.monotonic() - trainer.state["seconds"]
    while any(trainer.state[k] < getattr(args, k + "s") for k in ("vae_step", "decoder_step", "step")):
        if trainer.state["vae_step"] < args.vae_steps:
            loss = trainer.vae_step(args.batch)
            if trainer.state["vae_step"] == args.vae_steps:
                trainer.fix_scaling_factor()
                trainer.build_latent_cache(args.cache)
                trainer.save()
            step = f"vae {trainer.state['vae_step']}"
        elif trainer.state["decoder_step"] < args.decoder_steps:
            loss = trainer.decoder_step(args.batch)
            step = f"decoder {trainer.state['decoder_step']}"
            if trainer.state["decoder_step"] == args.decoder_steps:
                trainer.save()
        else:
            progress = trainer.state["step"] / args.steps if args.cosine else 0.0
            for group in trainer.opt.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * progress))
            loss = trainer.diffusion_step(args.batch)
            step = f"unet {trainer.state['step']}"
        trainer.state["seconds"] = time.monotonic() - start
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes:
            extra = f" text-sensitivity {trainer.text_sensitivity():.3f}" if trainer.state["step"] else ""
            print(f"{step} loss {loss:.4f} {trainer.state['seconds'] / 60:.1f} min{extra}", flush=True)
            trainer.save()
            last_save = time.monotonic()
    if not args.export_only:
        trainer.save()
    if args.out:
        trainer.export(args.out)
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
