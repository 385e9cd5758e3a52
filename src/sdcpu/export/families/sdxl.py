"""The Stable Diffusion XL family's exporters (Podell et al., https://arxiv.org/abs/2307.01952): two text
encoders, and a UNet that also takes the pooled text and the image's size and crop ("micro-conditioning",
sec. 2.2) as `added_cond_kwargs`. The VAE's exporters are SD's.

Tensor names and output order follow optimum's SDXL export, which openvino.genai reads by position:
- `text_encoder` (CLIP ViT-L): `input_ids -> last_hidden_state, pooler_output, hidden_states.0 ... .L`;
- `text_encoder_2` (OpenCLIP ViT-bigG, with projection): `input_ids -> text_embeds, last_hidden_state,
  hidden_states.0 ... .L`; `text_embeds` is the pooled, projected text;
- `unet`: `sample, timestep, encoder_hidden_states, text_embeds, time_ids -> out_sample`.
SDXL conditions on the penultimate hidden state of each encoder (`hidden_states.{L-1}`, output L + 1),
concatenated along the width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sdcpu.export.calibration import TextInputs, compiled_text_encoder
from sdcpu.export.families.base import ExportFamily, ExportSpec, TorchClass
from sdcpu.export.families.sd import STABLE_DIFFUSION, _UNet, _unet_inputs, _UNetShallow
from sdcpu.runtime.components.tokenizer import ClipTokenizer
from sdcpu.runtime.pipelines.sdxl import ENCODERS, penultimate_outputs, text_conditioning

TIME_IDS = 6  # original size (h, w), crop top-left (y, x), target size (h, w)
VAE_COMPONENTS = ("vae_decoder", "vae_encoder", "tiny_vae_decoder", "tiny_vae_encoder")


def calibration_text(staged: Path, tokenizers: dict[str, Path], image_size: int) -> TextInputs:
    """int8-hybrid's calibration inputs as the runtime makes them for a prompt and no negative prompt:
    zeros as the unconditional half (force_zeros_for_empty_prompt), the square size made, uncropped."""
    first, second = (compiled_text_encoder(staged / name) for name in ENCODERS)
    tokenizer, tokenizer_2 = ClipTokenizer(tokenizers["tokenizer"]), ClipTokenizer(tokenizers["tokenizer_2"])
    penultimate = penultimate_outputs(staged)
    time_ids = np.array([[image_size, image_size, 0, 0, image_size, image_size]] * 2, dtype=np.float32)

    def text(prompt: str) -> dict[str, np.ndarray]:
        hidden, pooled = text_conditioning(first(tokenizer([prompt])), second(tokenizer_2([prompt])), penultimate)
        unconditional = lambda x: np.concatenate([np.zeros_like(x), x])  # noqa: E731
        return {
            "encoder_hidden_states": unconditional(hidden),
            "text_embeds": unconditional(pooled),
            "time_ids": time_ids,
        }

    return text


class _TextEncoderWithHiddenStates(torch.nn.Module):
    """Every hidden state as an output, after the two optimum puts first."""

    def __init__(self, model, projected: bool):
        super().__init__()
        self.model, self.projected = model, projected

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        first, second = (
            (out.text_embeds, out.last_hidden_state) if self.projected else (out.last_hidden_state, out.pooler_output)
        )
        return (first, second, *out.hidden_states)


class _UNetXL(_UNet):
    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.run(sample, timestep, encoder_hidden_states, added_cond_kwargs=added)


class _UNetXLShallow(_UNetShallow):
    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, deep_features):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.run(sample, timestep, encoder_hidden_states, deep_features, added)


def _text_encoder_spec(model, projected: bool) -> ExportSpec:
    length, layers = model.config.max_position_embeddings, model.config.num_hidden_layers
    ids = torch.zeros((2, length), dtype=torch.int64)
    first = ("text_embeds", "last_hidden_state") if projected else ("last_hidden_state", "pooler_output")
    names = (*first, *(f"hidden_states.{i}" for i in range(layers + 1)))
    module = _TextEncoderWithHiddenStates(model, projected)
    return ExportSpec(module, {"input_ids": ids}, names, {"input_ids": {0: "batch"}})


def text_encoder_spec(model) -> ExportSpec:
    return _text_encoder_spec(model, projected=False)


def text_encoder_2_spec(model) -> ExportSpec:
    return _text_encoder_spec(model, projected=True)


def _unet_xl_inputs(model) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, str]]]:
    inputs, axes = _unet_inputs(model)
    config = model.config
    pooled = config.projection_class_embeddings_input_dim - TIME_IDS * config.addition_time_embed_dim
    inputs["text_embeds"] = torch.randn(2, pooled)
    inputs["time_ids"] = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)
    return inputs, axes | {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}


def unet_spec(model) -> ExportSpec:
    inputs, axes = _unet_xl_inputs(model)
    return ExportSpec(_UNetXL(model), inputs, ("out_sample", "deep_features"), axes, ("deep_features",), ("timestep",))


def unet_shallow_spec(model) -> ExportSpec:
    inputs, axes = _unet_xl_inputs(model)
    batch, _, height, width = inputs["sample"].shape
    inputs["deep_features"] = torch.randn(batch, model.config.block_out_channels[1], height, width)
    axes["deep_features"] = {0: "batch", 2: "height", 3: "width"}
    return ExportSpec(_UNetXLShallow(model), inputs, ("out_sample",), axes, int64_inputs=("timestep",))


STABLE_DIFFUSION_XL = ExportFamily(
    loaders={
        "text_encoder": TorchClass("transformers", "CLIPTextModel"),
        "text_encoder_2": TorchClass("transformers", "CLIPTextModelWithProjection"),
        "unet": TorchClass("diffusers", "UNet2DConditionModel"),
        "vae": TorchClass("diffusers", "AutoencoderKL"),
    },
    components={
        "text_encoder": ("text_encoder", text_encoder_spec),
        "text_encoder_2": ("text_encoder_2", text_encoder_2_spec),
        "unet": ("unet", unet_spec),
        "unet_shallow": ("unet", unet_shallow_spec),
        # the VAE's and the tiny VAE's, as SD's
        **{name: STABLE_DIFFUSION.components[name] for name in VAE_COMPONENTS},
    },
    tokenizers=("tokenizer", "tokenizer_2"),
    safety_checker=False,
    calibration_text=calibration_text,
    pipeline_classes={
        "text-to-image": "StableDiffusionXLPipeline",
        "inpainting": "StableDiffusionXLInpaintPipeline",
    },
)
