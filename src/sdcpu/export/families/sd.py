"""The Stable Diffusion 1.x/2.x family's exporters, one per component: the module to trace, its example inputs,
names and dynamic axes.

Tensor names follow diffusers/optimum: `input_ids -> last_hidden_state` (text_encoder),
`sample, timestep, encoder_hidden_states -> out_sample` (unet), `latent_sample -> sample`
(vae_decoder), `sample -> latent_parameters` (vae_encoder; mean and log-variance, 2 x latent channels).
The timestep has shape (batch,). OpenVINO IRs store it as int64, which optimum-intel and openvino.genai
feed, and convert it to float32 first thing; sdcpu's runtime makes that input float32 again when it
loads the graph (GraphInterface), so the Euler-family schedulers' fractional timesteps pass. ONNX
graphs keep a float32 timestep (optimum's ONNX Runtime pipeline feeds the dtype the graph declares).

DeepCache (Ma et al. 2023, https://arxiv.org/abs/2312.00858): the UNet's deep features change slowly
from one denoising step to the next, so a step may reuse those of an earlier step and recompute only
the outermost skip branch (their branch 1: conv_in, the first down block's layers, the last up block,
conv_out). The unet graph therefore names `deep_features`, the input of its last up block, inside it:
traced as a second output, then stored with `out_sample` alone, the single output other tools expect
(the runtime asks for the named tensor too; a stored second graph would double the weights). And
`unet_shallow` computes `sample, timestep, encoder_hidden_states, deep_features -> out_sample` along
that branch alone. With the features of the same step it returns exactly what the unet does.
"""

from __future__ import annotations

import torch

from sdcpu.export.families.base import ExportFamily, ExportSpec, TorchClass

TRACE_LATENTS = 32  # the largest example size traced, in latents (256 pixels)


class _TextEncoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, return_dict=False)[0]


class _UNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.run(sample, timestep, encoder_hidden_states)

    def run(self, *args, **kwargs):
        deep = []  # the last up block's input, caught on its way in

        def catch(module, hook_args, hook_kwargs):
            deep.append(hook_kwargs["hidden_states"])

        hook = self.model.up_blocks[-1].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            out = self.model(*args, **kwargs, return_dict=False)[0]
        finally:
            hook.remove()
        return out, deep[0]


class _UNetWithClassLabels(_UNet):
    """The x4 upscaler's UNet: its class label is the noise level of its low-res input."""

    def forward(self, sample, timestep, encoder_hidden_states, class_labels):
        return self.run(sample, timestep, encoder_hidden_states, class_labels=class_labels)


class _UNetShallow(torch.nn.Module):
    """The UNet's outermost skip branch around given deep features (DeepCache, see the module notes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, deep_features):
        return self.run(sample, timestep, encoder_hidden_states, deep_features)

    def run(self, sample, timestep, encoder_hidden_states, deep_features, added_cond_kwargs=None):
        unet = self.model
        emb = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
        if added_cond_kwargs is not None:  # SDXL: the pooled text and the size and crop, as the whole UNet adds them
            emb = emb + unet.get_aug_embed(emb, encoder_hidden_states, added_cond_kwargs)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        h = unet.conv_in(sample)
        skips = [h]  # what the first down block hands to the last up block; its downsampler is not needed
        first = unet.down_blocks[0]
        attentions = getattr(first, "attentions", None) or [None] * len(first.resnets)
        for resnet, attention in zip(first.resnets, attentions, strict=True):
            h = resnet(h, emb)
            if attention is not None:
                h = attention(h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            skips.append(h)
        last = unet.up_blocks[-1]
        text = {"encoder_hidden_states": encoder_hidden_states} if getattr(last, "has_cross_attention", False) else {}
        h = last(hidden_states=deep_features, res_hidden_states_tuple=tuple(skips), temb=emb, **text)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample, return_dict=False)[0].parameters


def text_encoder_spec(model) -> ExportSpec:
    length = model.config.max_position_embeddings
    ids = torch.zeros((2, length), dtype=torch.int64)
    return ExportSpec(_TextEncoder(model), {"input_ids": ids}, ("last_hidden_state",), {"input_ids": {0: "batch"}})


def _unet_inputs(model) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, str]]]:
    # An odd example size makes diffusers take its general upsampling path (interpolate to the skip
    # connection's size) while tracing, so the graph serves every size that is a multiple of 8 pixels,
    # not only multiples of 8 latents. The graph's sizes are dynamic, so the example is kept small: at
    # SDXL's native 128 latents, tracing alone held gigabytes of activations.
    size, channels = min(model.config.sample_size, TRACE_LATENTS) + 1, model.config.in_channels
    inputs = {
        "sample": torch.randn(2, channels, size, size),
        "timestep": torch.tensor([999.0, 999.0]),
        "encoder_hidden_states": torch.randn(2, 77, model.config.cross_attention_dim),
    }
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
    }
    return inputs, axes


def _has_class_labels(model) -> bool:
    return model.config.num_class_embeds is not None or model.config.class_embed_type is not None


def unet_spec(model) -> ExportSpec:
    inputs, axes = _unet_inputs(model)
    module: torch.nn.Module = _UNet(model)
    if _has_class_labels(model):  # the x4 upscaler: `class_labels` (int64, one per batch item) is the noise level
        inputs["class_labels"] = torch.tensor([20, 20], dtype=torch.int64)
        axes["class_labels"] = {0: "batch"}
        module = _UNetWithClassLabels(model)
    return ExportSpec(module, inputs, ("out_sample", "deep_features"), axes, ("deep_features",), ("timestep",))


def unet_shallow_spec(model) -> ExportSpec | None:
    """None for UNets with class labels, whose embedding the shallow pass does not add."""
    if _has_class_labels(model):
        return None
    inputs, axes = _unet_inputs(model)
    # The last up block's input has the second level's width at the full latent size.
    batch, _, height, width = inputs["sample"].shape
    inputs["deep_features"] = torch.randn(batch, model.config.block_out_channels[1], height, width)
    axes["deep_features"] = {0: "batch", 2: "height", 3: "width"}
    return ExportSpec(_UNetShallow(model), inputs, ("out_sample",), axes, int64_inputs=("timestep",))


def vae_decoder_spec(vae) -> ExportSpec:
    size = min(vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1), TRACE_LATENTS)
    latent = torch.randn(1, vae.config.latent_channels, size, size)
    axes = {"latent_sample": {0: "batch", 2: "height", 3: "width"}}
    return ExportSpec(_VaeDecoder(vae), {"latent_sample": latent}, ("sample",), axes)


def vae_encoder_spec(vae) -> ExportSpec:
    size = min(vae.config.sample_size, TRACE_LATENTS * 2 ** (len(vae.config.block_out_channels) - 1))
    image = torch.randn(1, vae.config.in_channels, size, size)
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}}
    return ExportSpec(_VaeEncoder(vae), {"sample": image}, ("latent_parameters",), axes)


class _TinyVaeEncoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample, return_dict=False)[0]


def tiny_vae_decoder_spec(vae) -> ExportSpec:
    """TAESD's decoder (diffusers' AutoencoderTiny): the UNet's latents as they are (its scaling factor
    is 1) to pixels in [-1, 1], the same names as the VAE decoder's."""
    latent = torch.randn(1, vae.config.latent_channels, 8, 8)
    axes = {"latent_sample": {0: "batch", 2: "height", 3: "width"}}
    return ExportSpec(_VaeDecoder(vae), {"latent_sample": latent}, ("sample",), axes)


def tiny_vae_encoder_spec(vae) -> ExportSpec:
    """TAESD's encoder: pixels in [-1, 1] to the UNet's latents (a point, not a distribution)."""
    image = torch.randn(1, vae.config.in_channels, 64, 64)
    axes = {"sample": {0: "batch", 2: "height", 3: "width"}}
    return ExportSpec(_TinyVaeEncoder(vae), {"sample": image}, ("latent_sample",), axes)


class _DepthEstimator(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).predicted_depth


def depth_estimator_spec(model) -> ExportSpec:
    """depth2img's DPT: `pixel_values` (its image processor's size, 384x384 for SD 2 depth) to
    `predicted_depth` (relative inverse depth, larger is nearer)."""
    size = model.config.image_size
    pixels = torch.randn(1, model.config.num_channels, size, size)
    return ExportSpec(
        _DepthEstimator(model), {"pixel_values": pixels}, ("predicted_depth",), {"pixel_values": {0: "batch"}}
    )


# The SD 1.x/2.x family (and the demo model, of their architecture): one CLIP text encoder, a UNet that
# takes `encoder_hidden_states` (and the x4 upscaler's `class_labels`), and an AutoencoderKL.
STABLE_DIFFUSION = ExportFamily(
    loaders={
        "text_encoder": TorchClass("transformers", "CLIPTextModel"),
        "unet": TorchClass("diffusers", "UNet2DConditionModel"),
        "vae": TorchClass("diffusers", "AutoencoderKL"),
    },
    # A spec function returns None where its component does not apply to the model (no DeepCache pass
    # for the upscaler's UNet).
    components={
        "text_encoder": ("text_encoder", text_encoder_spec),
        "unet": ("unet", unet_spec),
        "unet_shallow": ("unet", unet_shallow_spec),
        "vae_decoder": ("vae", vae_decoder_spec),
        "vae_encoder": ("vae", vae_encoder_spec),
        "tiny_vae_decoder": ("tiny_vae", tiny_vae_decoder_spec),
        "tiny_vae_encoder": ("tiny_vae", tiny_vae_encoder_spec),
        "depth_estimator": ("depth_estimator", depth_estimator_spec),
    },
    pipeline_classes={
        "text-to-image": "StableDiffusionPipeline",
        "inpainting": "StableDiffusionInpaintPipeline",
        "upscaling": "StableDiffusionUpscalePipeline",
        "depth-to-image": "StableDiffusionDepth2ImgPipeline",
    },
)
