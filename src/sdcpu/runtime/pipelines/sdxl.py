"""Stable Diffusion XL (Podell et al., https://arxiv.org/abs/2307.01952), and the models of its
architecture (SDXL-Turbo, Lightning, Hyper-SD; SSD-1B and Vega, with smaller UNets).

Two tokenizers and text encoders, CLIP ViT-L and OpenCLIP ViT-bigG. The UNet's inputs (as diffusers'
StableDiffusionXLPipeline makes them):
- `encoder_hidden_states`: the penultimate hidden state of each encoder, concatenated along the width
  (768 + 1280 = 2048 for SDXL); the graphs give every hidden state, `hidden_states.{L-1}` is output L + 1;
- `text_embeds`: the second encoder's pooled, projected text (its first output);
- `time_ids`: sec. 2.2's micro-conditioning, (original height, width, crop top, left, target height,
  width). sdcpu conditions on the size it makes, uncropped, as diffusers does by default.
With guidance and no negative prompt, a model whose model_index.json says `force_zeros_for_empty_prompt`
(SDXL base does) takes zeros as the negative half of both text inputs, not the encoding of "".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcpu.format.json_bounds import read_json_object
from sdcpu.runtime.components.tokenizer import ClipTokenizer
from sdcpu.runtime.components.unet import GuidedInput
from sdcpu.runtime.engines import Model
from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.schedulers import SamplingDefaults
from sdcpu.runtime.settings import GenerationSettings

ENCODERS = ("text_encoder", "text_encoder_2")


def text_conditioning(
    first: list[np.ndarray], second: list[np.ndarray], penultimate: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The encoders' outputs -> (`encoder_hidden_states`, `text_embeds`): the penultimate hidden states
    (at `penultimate`, per encoder) concatenated along the width, and the second encoder's pooled text."""
    return np.concatenate([first[penultimate[0]], second[penultimate[1]]], axis=-1), second[0]


def penultimate_outputs(folder: Path) -> list[int]:
    """Where each text encoder's penultimate hidden state is among its outputs: L + 1 (module notes)."""
    layers = [read_json_object(folder / name / "config.json")["num_hidden_layers"] for name in ENCODERS]
    return [int(count) + 1 for count in layers]


class StableDiffusionXLPipeline(Pipeline, families=("sdxl",)):
    sampling = SamplingDefaults(steps=20, guidance=5.0)  # diffusers' SDXL guidance (its steps: 50)
    _prompts: tuple[list[str], tuple[np.ndarray, np.ndarray]] | None = None  # the last prompts, and their encoding

    def read_tokenizers(self) -> None:
        self.tokenizer = ClipTokenizer(self.folder / "tokenizer")
        self.tokenizer_2 = ClipTokenizer(self.folder / "tokenizer_2")
        index = read_json_object(self.folder / "model_index.json")
        self.force_zeros = bool(index.get("force_zeros_for_empty_prompt", True))
        self.penultimate = penultimate_outputs(self.folder)

    def load_text_encoders(self) -> None:
        self.text_encoder = self._load("text_encoder")
        self.text_encoder_2 = self._load("text_encoder_2")

    def text_encoders(self) -> dict[str, Model | None]:
        return {"text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}

    def encode_prompt(self, prompt: str, negative: str, n: int, guided: bool) -> dict[str, GuidedInput]:
        zeros = guided and not negative and self.force_zeros  # the negative half is zeros, not encoded
        prompts = [negative, prompt] if guided and not zeros else [prompt]
        if self._prompts is None or self._prompts[0] != prompts:
            self._prompts = (prompts, self._encode(prompts))
        hidden, pooled = (np.repeat(rows[:, None], n, axis=1).astype(np.float32) for rows in self._prompts[1])
        # hidden: (prompts, n, tokens, width); pooled: (prompts, n, width); the last row is the prompt's.
        if not guided:
            return {
                "encoder_hidden_states": GuidedInput(None, hidden[-1]),
                "text_embeds": GuidedInput(None, pooled[-1]),
            }
        negative_hidden, negative_pooled = (
            (np.zeros_like(hidden[-1]), np.zeros_like(pooled[-1])) if zeros else (hidden[0], pooled[0])
        )
        return {
            "encoder_hidden_states": GuidedInput(negative_hidden, hidden[-1]),
            "text_embeds": GuidedInput(negative_pooled, pooled[-1]),
        }

    def _encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        # (prompts, tokens, 768 + 1280) hidden states and (prompts, 1280) pooled text, for SDXL's widths.
        first = self.text_encoder.outputs(input_ids=self.tokenizer(prompts))
        self.free(self.text_encoder)
        second = self.text_encoder_2.outputs(input_ids=self.tokenizer_2(prompts))
        self.free(self.text_encoder_2)
        return text_conditioning(first, second, self.penultimate)

    def micro_conditioning(self, s: GenerationSettings) -> dict[str, GuidedInput]:
        # (original size, crop top-left, target size): the size made, uncropped, in both halves.
        time_ids = np.array([[s.height, s.width, 0, 0, s.height, s.width]] * s.num_images, dtype=np.float32)
        return {"time_ids": GuidedInput.same(time_ids)}
