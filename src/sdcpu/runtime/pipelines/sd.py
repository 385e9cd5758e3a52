"""Stable Diffusion 1.x and 2.x (and the bundled demo model, of their architecture): one CLIP tokenizer and
text encoder, whose last hidden state is the UNet's `encoder_hidden_states` (Rombach et al.,
https://arxiv.org/abs/2112.10752, sec. 3.3: cross-attention to the text's tokens)."""

from __future__ import annotations

import numpy as np

from sdcpu.runtime.components.tokenizer import ClipTokenizer
from sdcpu.runtime.components.unet import GuidedInput
from sdcpu.runtime.engines import Model
from sdcpu.runtime.pipelines.base import Pipeline


class StableDiffusionPipeline(Pipeline, families=("sd1", "sd2", "other")):
    _prompts: tuple[list[str], np.ndarray] | None = None  # the last prompts encoded, and their encoding

    def read_tokenizers(self) -> None:
        self.tokenizer = ClipTokenizer(self.folder / "tokenizer")

    def load_text_encoders(self) -> None:
        self.text_encoder = self._load("text_encoder")

    def text_encoders(self) -> dict[str, Model | None]:
        return {"text_encoder": self.text_encoder}

    def encode_prompt(self, prompt: str, negative: str, n: int, guided: bool) -> dict[str, GuidedInput]:
        # [negative, prompt] as one batch of the encoder when guided.
        prompts = [negative, prompt] if guided else [prompt]
        # The same prompts again (a seed sweep, a batch count): the last call's encoding, not the encoder's.
        if self._prompts is None or self._prompts[0] != prompts:
            self._prompts = (prompts, self.text_encoder(input_ids=self.tokenizer(prompts)))
            self.free(self.text_encoder)
        rows = [np.repeat(row[None], n, axis=0).astype(np.float32) for row in self._prompts[1]]
        return {"encoder_hidden_states": GuidedInput(rows[0], rows[1]) if guided else GuidedInput(None, rows[0])}
