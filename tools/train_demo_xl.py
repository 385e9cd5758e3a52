"""Distil demo-xl, the demo world through SDXL's architecture, from the bundled demo model.

    python tools/train_demo_xl.py --work /tmp/demo-xl --steps 4000 --out /tmp/demo-xl/source
    sdcpu convert /tmp/demo-xl/source src/sdcpu/models/demo/xl --precision fp16

The student has every part SDXL adds (Podell et al., https://arxiv.org/abs/2307.01952):
- two text encoders, conditioned on through their penultimate hidden states, concatenated (64 + 64 wide).
  The first is the demo's own CLIP encoder with one more layer on top, so that its penultimate state is
  the demo's last one (before the final layer norm); the second is new, a CLIPTextModelWithProjection
  whose pooled, projected text is the UNet's `text_embeds`;
- a UNet with SDXL's added conditioning (`addition_embed_type` "text_time": the pooled text and the six
  size and crop numbers), its first level without attention, as SDXL's. It starts as the demo's UNet:
  every weight of the same name and shape copied, the cross-attention keys and values reading the first
  encoder's half through the demo's weights and the second's through zeros, the added embedding's last
  layer zero (it adds nothing at first);
- zeros, not the encoding of "", as the unconditional text (`force_zeros_for_empty_prompt`): dropped
  captions (10%) train it.
The VAE, the tokenizer (both encoders use it) and the DDIM scheduler are the demo's.

Training is distillation: at a random timestep of a cached training render's latents, the student's
noise prediction regresses onto the demo model's (for the same caption, or "" where it was dropped), with
the demo's loss weighting (min-SNR-5, x0 weight at least 0.5). The teacher's target has far less
variance than the drawn noise, so the student needs a fraction of the demo's training steps. Time ids are
always the renders' 64x64, uncropped: the demo world has no other sizes, so they carry no information here.

Checkpoints every few minutes; a rerun with the same --work resumes. Needs the `[export]` extra.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from train_demo import SCHEDULER, UNET, render_batch
from train_fewstep_demo import Teacher, train
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdcpu.demo import world as world
from sdcpu.export.convert import model_index
from sdcpu.models import SOURCE

TIME_EMBED = 16  # per size or crop number (SDXL: 256)
TEXT_2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, projection_dim=64)
UNET_XL: dict[str, Any] = dict(
    UNET,
    cross_attention_dim=128,  # the two encoders' 64 each
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_EMBED,
    projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_2["projection_dim"],
    transformer_layers_per_block=1,
)
TIME_IDS = torch.tensor([[world.SIZE, world.SIZE, 0, 0, world.SIZE, world.SIZE]], dtype=torch.float32)


def first_encoder(teacher: Teacher) -> Any:
    """The demo's encoder and one layer more: hidden_states[-2] is then the demo's last layer's output."""
    config = teacher.text.config.to_dict() | {"num_hidden_layers": teacher.text.config.num_hidden_layers + 1}
    model = CLIPTextModel(CLIPTextConfig(**config))
    missing, unexpected = model.load_state_dict(teacher.text.state_dict(), strict=False)
    assert not unexpected and all(".layers.2." in name for name in missing), (missing, unexpected)
    return model


def second_encoder(teacher: Teacher) -> Any:
    keep = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "max_position_embeddings", "hidden_act")
    config = {key: teacher.text.config.to_dict()[key] for key in keep} | TEXT_2
    return CLIPTextModelWithProjection(CLIPTextConfig(**config))


def student_unet(teacher: Teacher) -> Any:
    unet = cast(Any, UNet2DConditionModel(**UNET_XL))
    taught = teacher.unet.state_dict()
    with torch.no_grad():
        for name, weight in unet.state_dict().items():
            source = taught.get(name)
            if source is not None and source.shape == weight.shape:
                weight.copy_(source)
            elif source is not None and name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
                weight.zero_()
                weight[:, : source.shape[1]] = source  # the first encoder's half through the demo's weights
        unet.add_embedding.linear_2.weight.zero_()
        unet.add_embedding.linear_2.bias.zero_()
    return unet


class StudentXL:
    def __init__(self, work: Path, teacher: Teacher, lr: float, seed: int, cache: int):
        self.work, self.teacher = work, teacher
        torch.manual_seed(seed)
        self.text, self.text_2, self.unet = first_encoder(teacher), second_encoder(teacher), student_unet(teacher)
        params = self.params()
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        self.ema = [p.detach().clone() for p in params]
        self.state = {"step": 0, "seconds": 0.0}
        self.rng = np.random.default_rng(seed)
        self.scenes, _ = world.split_scenes()
        self.scaling = float(teacher.vae.config.scaling_factor)
        self.latents, self.scene_ids = self.latent_cache(cache)

    def params(self) -> list[torch.nn.Parameter]:
        return [*self.unet.parameters(), *self.text.parameters(), *self.text_2.parameters()]

    def latent_cache(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` jittered training renders, encoded once by the demo's VAE (mean, scaled)."""
        path = self.work / "latents.npz"
        if not path.exists():
            self.work.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(123)
            picks = rng.integers(0, len(self.scenes), count)
            with torch.no_grad():
                chunks = [
                    self.teacher.vae.encode(
                        render_batch([self.scenes[i] for i in picks[s : s + 256]], rng)
                    ).latent_dist.mean
                    for s in range(0, count, 256)
                ]
            np.savez(path, latents=torch.cat(chunks).numpy() * self.scaling, scenes=picks)
        data = np.load(path)
        return data["latents"], data["scenes"]

    def captions(self, rows: np.ndarray) -> list[str]:
        # caption dropout (10%) for guidance; 15% leave the size out, as the demo was trained
        out = []
        for row in rows:
            scene = self.scenes[int(self.scene_ids[row])]
            caption = scene.caption(int(self.rng.integers(0, len(world.TEMPLATES))))
            caption = caption.replace(f" {scene.size} ", " ", 1) if self.rng.random() < 0.15 else caption
            out.append(caption if self.rng.random() > 0.1 else "")
        return out

    def conditioning(self, captions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """As the runtime conditions (runtime/pipelines/sdxl.py): zeros for a dropped caption."""
        ids = torch.from_numpy(self.teacher.tokenizer(captions))
        first = self.text(ids, output_hidden_states=True).hidden_states[-2]
        second = self.text_2(ids, output_hidden_states=True)
        hidden = torch.cat([first, second.hidden_states[-2]], dim=-1)
        keep = torch.tensor([bool(c) for c in captions], dtype=hidden.dtype)
        pooled = second.text_embeds * keep[:, None]
        added = {"text_embeds": pooled, "time_ids": TIME_IDS.expand(len(captions), -1)}
        return hidden * keep[:, None, None], added

    def step(self, batch_size: int) -> float:
        rows = self.rng.integers(0, len(self.scene_ids), batch_size)
        captions = self.captions(rows)
        latents = torch.from_numpy(self.latents[rows])
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch_size,))
        t = torch.where(torch.rand(batch_size) < 0.5, 500 + t // 2, t)  # half from the noisier half, as the demo
        a = self.teacher.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.no_grad():
            target = self.teacher.unet(noisy, t, self.teacher.embed(captions)).sample
        hidden, added = self.conditioning(captions)
        pred = self.unet(noisy, t, hidden, added_cond_kwargs=added).sample
        snr = (a / (1 - a)).flatten()
        weight = torch.clamp(snr, min=0.5, max=5.0) / snr
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params(), 1.0)
        self.opt.step()
        self.state["step"] += 1
        decay = min(0.999, (1 + self.state["step"]) / (10 + self.state["step"]))
        torch._foreach_lerp_(self.ema, [p.detach() for p in self.params()], 1 - decay)
        return float(loss.detach())

    def save(self) -> None:
        blob = {"unet": self.unet.state_dict(), "text": self.text.state_dict(), "text_2": self.text_2.state_dict()}
        blob |= {"opt": self.opt.state_dict(), "ema": self.ema, "torch_rng": torch.get_rng_state()}
        torch.save(blob, self.work / "student.pt.tmp")
        (self.work / "student.pt.tmp").replace(self.work / "student.pt")
        meta = {**self.state, "numpy_rng": self.rng.bit_generator.state}
        (self.work / "student.json").write_text(json.dumps(meta))

    def resume(self) -> None:
        if not (self.work / "student.pt").exists():
            return
        blob = torch.load(self.work / "student.pt", weights_only=True)
        for name in ("unet", "text", "text_2"):
            getattr(self, name).load_state_dict(blob[name])
        self.opt.load_state_dict(blob["opt"])
        self.ema = blob["ema"]
        torch.set_rng_state(blob["torch_rng"])
        meta = json.loads((self.work / "student.json").read_text())
        self.rng.bit_generator.state = meta.pop("numpy_rng")
        self.state.update(meta)

    def export(self, source: Path, out: Path) -> None:
        """The EMA weights as a diffusers SDXL folder."""
        with torch.no_grad():
            for live, ema in zip(self.params(), self.ema, strict=True):
                live.copy_(ema)
        out.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(out / "unet")
        self.text.save_pretrained(out / "text_encoder")
        # under the `text_model.` keys every transformers version reads (5.2x saves them without)
        weights = load_file(str(out / "text_encoder" / "model.safetensors"))
        canonical = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()}
        save_file(canonical, str(out / "text_encoder" / "model.safetensors"))
        self.text_2.save_pretrained(out / "text_encoder_2")
        shutil.copytree(source / "vae", out / "vae", dirs_exist_ok=True)
        for name in ("tokenizer", "tokenizer_2"):
            shutil.copytree(source / "tokenizer", out / name, dirs_exist_ok=True)
        (out / "scheduler").mkdir(exist_ok=True)
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
        index = model_index(SCHEDULER["_class_name"], family="sdxl") | {"force_zeros_for_empty_prompt": True}
        (out / "model_index.json").write_text(json.dumps(index, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the latent cache and checkpoints; a rerun resumes")
    parser.add_argument("--out", type=Path, help="write the diffusers folder here when done")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--cache", type=int, default=8192, help="how many encoded renders training draws from")
    parser.add_argument("--checkpoint-minutes", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = Teacher(SOURCE)
    student = StudentXL(args.work, teacher, args.lr, args.seed, args.cache)
    train(student, args.steps, args.batch, args.lr, args.checkpoint_minutes, "demo-xl")
    if args.out is not None:
        student.export(SOURCE, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
