"""Distil a few-step model and train a tiny decoder from the bundled demo model.

    python tools/train_fewstep_demo.py --work /tmp/fewstep --out-fewstep F --out-tiny T

Nine stages, fixed seeds, each resumable (a rerun with the same --work continues where it stopped):

1. **Teacher trajectories.** The demo model (the teacher) samples with DDIM (eta 0) and classifier-free
   guidance 7.5 along the 50-step grid t = 999, 979, ..., 19 that the LCM scheduler draws its timesteps
   from, for training captions only. Every state x_t on the way and the endpoint x0 are stored.
2. **Few-step student.** A copy of the teacher's UNet learns to map any stored x_t straight to its
   trajectory's endpoint, through the LCM scheduler's boundary condition
   f(x, t) = c_skip(t) x + c_out(t) x0_hat (Luo et al., https://arxiv.org/abs/2310.04378, eq. 9).
   This is consistency distillation (Song et al., https://arxiv.org/abs/2303.01469) with the exact
   teacher ODE solution as the target instead of a bootstrapped one-step estimate, i.e. Luhman & Luhman's
   trajectory distillation (https://arxiv.org/abs/2101.02388) applied at every grid point. On a CPU it
   pays the teacher once, up front, instead of three networks at every step, and the regression target
   does not drift. Guidance is baked in: the student runs with guidance off.
3. **Tiny decoder.** A diffusers AutoencoderTiny (TAESD's architecture, 4x instead of 8x) learns to
   decode the demo VAE's scaled latents (L1 to the renders) and to encode renders to them (MSE).
4. **Tiny decoder, distilled.** It then learns to reproduce the demo's own decoder (L1 + MSE to its
   output), on the latents of renders and on the teacher's generated latents (the trajectories'
   endpoints). Stage 3 alone gave reconstructions as close to the renders as the full decoder's (mean
   L1 0.024 both) but soft edges and tints that the oracle misread: 52% of held-out renders judged right
   through it against 97% through the full decoder, and 43% of generated images against 86%.
5. **Tiny decoder, edges.** Stage 4 as it is, with the outer two pixels weighing 10x: its remaining
   misreadings were single dark pixels at the image's edges and corners (zero padding), which the oracle,
   like an eye, takes as part of the shape (55% of held-out renders right after stage 4).
6. **Tiny decoder, corners.** The same with each corner's 3x3 pixels weighing 100x: after stage 5 the
   four corner pixels were still off by about 90 levels (57% of held-out renders right).
7. **Tiny decoder, grown, foreground-weighted.** The decoder grows from (2, 2, 1) to GROWN blocks per
   level; the new blocks start as identities, so the decoder's output does not change. Stage 4 then
   goes on with the shape weighing 21x: the pixels that differ from the target's border colour, dilated
   by 2. After stage 6, nearly every misreading was a shape, most of them triangles read as circles:
   a shape covers about 3% of the image, so the plain loss was mostly background.
8. **Tiny decoder, few-step samples.** Stage 7 with the few-step model's own 1-step samples (one per
   trajectory, from its start) added to the generated latents: after stage 7 the tiny decoder was within
   2 points of the full one on 20-step samples but 12.5 points short on 1-step samples, which are softer.
9. **Tiny decoder, outlines.** Stage 8 with three more 1-step samples per training caption (from new
   noise), the outer two pixels weighing 10x again, and the shape's outline (the foreground mask less
   its erosion by 3) 51x. After stage 8 the tiny decoder was still 6.6 points short on 1-step samples:
   borderline shapes whose outline it rounded (triangles read as circles), and blotches at the image's
   edges, which stage 7's weighting had let back in.

Needs the `[export]` extra. Text encoder, VAE and tokenizer of the few-step folder are the teacher's.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from train_demo import SCHEDULER
from train_tiny_decoder import TinyTrainer
from transformers import CLIPTextModel

from sdcpu.demo import world as world
from sdcpu.export.convert import model_index
from sdcpu.models import DEMO_ROOT
from sdcpu.runtime.components.tokenizer import ClipTokenizer

GRID = np.arange(999, 0, -20)  # the LCM scheduler's 50-step distillation grid, noisiest first
GUIDANCE = 7.5
LCM_SCHEDULER = {
    **SCHEDULER,
    "_class_name": "LCMScheduler",
    "original_inference_steps": len(GRID),
    "timestep_scaling": 10.0,
}


def boundary(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t) of the LCM scheduler (sigma_data 0.5, timestep scaling 10)."""
    scaled = t.float() * 10.0
    return 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25).sqrt()


class Teacher:
    def __init__(self, source: Path):
        self.unet = cast(Any, UNet2DConditionModel.from_pretrained(source / "unet")).eval()
        self.text = cast(Any, CLIPTextModel.from_pretrained(source / "text_encoder")).eval()
        self.vae = cast(Any, AutoencoderKL.from_pretrained(source / "vae")).eval()
        self.tokenizer = ClipTokenizer(source / "tokenizer")
        betas = torch.linspace(SCHEDULER["beta_start"] ** 0.5, SCHEDULER["beta_end"] ** 0.5, 1000) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)

    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        return self.text(torch.from_numpy(self.tokenizer(captions)))[0]

    @torch.no_grad()
    def trajectories(self, captions: list[str], generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """States at every grid timestep (N, 50, 4, h, w) and the endpoints (N, 4, h, w), DDIM eta 0."""
        cond, uncond = self.embed(captions), self.embed([""] * len(captions))
        x = torch.randn((len(captions), 4, world.SIZE // 4, world.SIZE // 4), generator=generator)
        states = []
        for i, t in enumerate(GRID):
            states.append(x.half().numpy())
            both = self.unet(torch.cat([x, x]), int(t), torch.cat([uncond, cond])).sample
            eps_u, eps_c = both.chunk(2)
            eps = eps_u + GUIDANCE * (eps_c - eps_u)
            a = self.alphas_cumprod[int(t)]
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            a_prev = self.alphas_cumprod[int(GRID[i + 1])] if i + 1 < len(GRID) else torch.tensor(1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        return np.stack(states, axis=1), x.numpy()


def training_captions(rng: np.random.Generator, count: int) -> list[str]:
    scenes, _ = world.split_scenes()
    picks = [scenes[i] for i in rng.integers(0, len(scenes), count)]
    captions = [s.caption(int(rng.integers(0, len(world.TEMPLATES)))) for s in picks]
    drop = rng.random(count) < 0.15  # as the teacher was trained: some captions leave the size out
    return [c.replace(f" {s.size} ", " ", 1) if d else c for c, s, d in zip(captions, picks, drop, strict=True)]


def stage_trajectories(work: Path, teacher: Teacher, count: int, chunk: int) -> None:
    """Chunk files are written whole (tmp + rename), so a stopped run redoes at most one chunk."""
    folder = work / "trajectories"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(math.ceil(count / chunk)):
        path = folder / f"chunk-{index:04d}.npz"
        if path.exists():
            continue
        started = time.monotonic()
        rng = np.random.default_rng(1000 + index)
        captions = training_captions(rng, chunk)
        states, x0 = teacher.trajectories(captions, torch.Generator().manual_seed(1000 + index))
        with open(folder / "chunk.tmp.npz", "wb") as handle:
            np.savez(handle, states=states, x0=x0, captions=np.array(captions))
        (folder / "chunk.tmp.npz").replace(path)
        print(f"trajectories {index + 1}/{math.ceil(count / chunk)} {time.monotonic() - started:.0f} s", flush=True)


class Student:
    def __init__(self, work: Path, teacher: Teacher, lr: float, seed: int):
        self.work, self.teacher = work, teacher
        self.unet = cast(Any, UNet2DConditionModel.from_config(teacher.unet.config))
        self.unet.load_state_dict(teacher.unet.state_dict())
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=lr, weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.unet.parameters()]
        self.state = {"step": 0, "seconds": 0.0}
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        chunks = [np.load(p) for p in sorted((work / "trajectories").glob("chunk-*.npz"))]
        self.states = np.concatenate([c["states"] for c in chunks])
        self.x0 = np.concatenate([c["x0"] for c in chunks])
        captions = [str(s) for c in chunks for s in c["captions"]]
        self.embeddings = torch.cat([teacher.embed(captions[i : i + 256]) for i in range(0, len(captions), 256)])

    def step(self, batch_size: int) -> float:
        rows = self.rng.integers(0, len(self.x0), batch_size)
        # a third of the batch at t = 999, the one-step case; the rest anywhere on the grid
        points = np.where(self.rng.random(batch_size) < 1 / 3, 0, self.rng.integers(0, len(GRID), batch_size))
        x = torch.from_numpy(self.states[rows, points].astype(np.float32))
        t = torch.from_numpy(GRID[points])
        eps = self.unet(x, t, self.embeddings[rows]).sample
        a = self.teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0_hat = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = (c.view(-1, 1, 1, 1) for c in boundary(t))
        loss = F.mse_loss(c_skip * x + c_out * x0_hat, torch.from_numpy(self.x0[rows]))
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        self.state["step"] += 1
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.unet.parameters()], 1 - 0.999)
        return float(loss.detach())

    def save(self) -> None:
        blob = {"unet": self.unet.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema}
        torch.save({**blob, "torch_rng": torch.get_rng_state()}, self.work / "student.pt.tmp")
        (self.work / "student.pt.tmp").replace(self.work / "student.pt")
        meta = {**self.state, "numpy_rng": self.rng.bit_generator.state}
        (self.work / "student.json").write_text(json.dumps(meta))

    def resume(self) -> None:
        if not (self.work / "student.pt").exists():
            return
        blob = torch.load(self.work / "student.pt", weights_only=True)
        self.unet.load_state_dict(blob["unet"])
        self.opt.load_state_dict(blob["opt"])
        self.ema = blob["ema"]
        torch.set_rng_state(blob["torch_rng"])
        meta = json.loads((self.work / "student.json").read_text())
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)

    def use_ema(self) -> None:
        """The EMA weights (what ships) into the live UNet: for export and sampling, after training."""
        with torch.no_grad():
            for live, ema in zip(self.unet.parameters(), self.ema, strict=True):
                live.copy_(ema)

    @torch.no_grad()
    def one_step(self, x: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """f(x, t) of the boundary condition at t = 999 for noise `x` and captions `rows`: what the few-step
        model draws in one LCM step, as the scheduler returns it."""
        t = torch.tensor(int(GRID[0]))
        c_skip, c_out = boundary(t)
        a = self.teacher.alphas_cumprod[t]
        eps = self.unet(x, t, self.embeddings[rows]).sample
        return (c_skip * x + c_out * (x - (1 - a).sqrt() * eps) / a.sqrt()).numpy()

    def caption_batches(self) -> list[np.ndarray]:
        return np.array_split(np.arange(len(self.x0)), max(1, len(self.x0) // 128))

    def one_step_samples(self) -> np.ndarray:
        """The shipped few-step model's 1-step sample from each trajectory's start. Cached in the work folder."""
        path = self.work / "one_step.npy"
        if not path.exists():
            self.use_ema()
            start = lambda rows: torch.from_numpy(self.states[rows, 0].astype(np.float32))  # noqa: E731
            np.save(path, np.concatenate([self.one_step(start(rows), rows) for rows in self.caption_batches()]))
        return np.load(path)

    def fresh_one_step_samples(self, draws: int = 3) -> np.ndarray:
        """`draws` more 1-step samples per training caption, from new noise (seed 77). Cached."""
        path = self.work / "one_step_fresh.npy"
        if not path.exists():
            self.use_ema()
            generator, out = torch.Generator().manual_seed(77), []
            for _ in range(draws):
                for rows in self.caption_batches():
                    x = torch.randn((len(rows), *self.x0.shape[1:]), generator=generator)
                    out.append(self.one_step(x, rows))
            np.save(path, np.concatenate(out))
        return np.load(path)

    def export(self, source: Path, out: Path) -> None:
        self.use_ema()
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(out / "unet")
        for name in ("text_encoder", "vae", "tokenizer"):
            shutil.copytree(source / name, out / name, dirs_exist_ok=True)
        (out / "scheduler").mkdir(exist_ok=True)
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(LCM_SCHEDULER, indent=2))
        (out / "model_index.json").write_text(json.dumps(model_index("LCMScheduler"), indent=2))


def train(
    trainer: Student | TinyTrainer, steps: int, batch: int, lr: float, minutes: float, name: str, key: str = "step"
) -> None:
    """Cosine-decayed learning rate, a checkpoint every `minutes`; resumes from the last one. `key`: the
    state's step counter, whose `trainer` method is the training step (`step`, `distil_step`, ...)."""
    trainer.resume()
    last_save, start = time.monotonic(), time.monotonic() - trainer.state["seconds"]
    step = getattr(trainer, key)
    while trainer.state.get(key, 0) < steps:
        for group in trainer.opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * trainer.state.get(key, 0) / steps))
        loss = step(batch)
        trainer.state["seconds"] = time.monotonic() - start
        if time.monotonic() - last_save > 60 * minutes or trainer.state[key] == steps:
            print(f"{name} {trainer.state[key]} loss {loss:.5f} {trainer.state['seconds'] / 60:.1f} min", flush=True)
            trainer.save()
            last_save = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="trajectories and checkpoints; a rerun resumes")
    parser.add_argument("--teacher", type=Path, default=DEMO_ROOT / "source", help="the demo model's diffusers folder")
    parser.add_argument("--trajectories", type=int, default=4096, help="teacher samples to distil from")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--student-steps", type=int, default=4000)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--tiny-steps", type=int, default=3000)
    parser.add_argument("--tiny-distil-steps", type=int, default=2000)
    parser.add_argument("--tiny-edge-steps", type=int, default=1000)
    parser.add_argument("--tiny-corner-steps", type=int, default=1000)
    parser.add_argument("--tiny-grown-steps", type=int, default=8000)
    parser.add_argument("--tiny-fewstep-steps", type=int, default=2000)
    parser.add_argument("--tiny-contour-steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out-fewstep", type=Path, help="write the few-step diffusers folder here")
    parser.add_argument("--out-tiny", type=Path, help="write the tiny autoencoder (diffusers AutoencoderTiny) here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(args.teacher)
    tiny = TinyTrainer(args.work, teacher, seed=2)
    train(tiny, args.tiny_steps, args.batch, 1e-3, args.checkpoint_minutes, "tiny")
    stage_trajectories(args.work, teacher, args.trajectories, args.chunk)
    student = Student(args.work, teacher, args.student_lr, seed=1)
    train(student, args.student_steps, args.batch, args.student_lr, args.checkpoint_minutes, "student")
    if args.out_fewstep:
        student.export(args.teacher, args.out_fewstep)
    train(tiny, args.tiny_distil_steps, args.batch, 3e-4, args.checkpoint_minutes, "tiny-distil", "distil_step")
    train(tiny, args.tiny_edge_steps, args.batch, 1e-4, args.checkpoint_minutes, "tiny-edges", "edge_step")
    train(tiny, args.tiny_corner_steps, args.batch, 1e-4, args.checkpoint_minutes, "tiny-corners", "corner_step")
    tiny.resume()
    if not tiny.state.get("grown"):
        tiny.grow()
    train(tiny, args.tiny_grown_steps, args.batch, 3e-4, args.checkpoint_minutes, "tiny-grown", "foreground_step")
    one_step = student.one_step_samples()
    tiny.generated = np.concatenate([student.x0, one_step])
    train(tiny, args.tiny_fewstep_steps, args.batch, 1e-4, args.checkpoint_minutes, "tiny-fewstep", "fewstep_step")
    tiny.generated = np.concatenate([student.x0, one_step, student.fresh_one_step_samples()])
    train(tiny, args.tiny_contour_steps, args.batch, 1e-4, args.checkpoint_minutes, "tiny-contour", "contour_step")
    if args.out_tiny:
        tiny.tiny.save_pretrained(args.out_tiny)
    print("done", flush=True)


if __name__ == "__main__":
    main()
