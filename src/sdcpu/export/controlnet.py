"""Convert a ControlNet (a diffusers `ControlNetModel`, read by export/controlnet_sources.py) into its
own folder: `controlnet/` as OpenVINO IR or ONNX, its config, and the manifest `sdcpu-controlnet.json`
(format/controlnet.py).

Tensor names: `sample, timestep, encoder_hidden_states, controlnet_cond` (SDXL's add `text_embeds` and
`time_ids`) -> `down_block_res_sample_0` ... `_N-1`, `mid_block_res_sample`, as diffusers' ControlNetModel
returns them, at conditioning scale 1: the runtime scales them (weight, guess mode) as diffusers does
inside the model, so one graph serves every weight. The control image is `controlnet_cond`, RGB in
[0, 1] at the output size; a BGR-trained ControlNet flips it inside the graph, as diffusers does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sdcpu.errors import SdcpuError
from sdcpu.export.controlnet_sources import load_controlnet
from sdcpu.export.families.base import ExportSpec
from sdcpu.export.folders import versions, write_manifest
from sdcpu.export.quantize import component_precision
from sdcpu.export.writers import WRITERS
from sdcpu.format.controlnet import COMPONENT, CONTROLNET_MANIFEST, ControlNetManifest
from sdcpu.format.graph_signature import read_inputs
from sdcpu.format.manifest import GRAPH_FILE, describe_files
from sdcpu.runtime.controlnet import RESIDUAL_GRAPH

TRACE_LATENTS = 9  # an odd size traces the general path, as the UNet's (export/families/sd.py)


class _ControlNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond):
        down, mid = self.model(sample, timestep, encoder_hidden_states, controlnet_cond, return_dict=False)
        return (*down, mid)


class _ControlNetXL(_ControlNet):
    """SDXL's: the pooled text and the size and crop ids, as its UNet takes them."""

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        down, mid = self.model(
            sample, timestep, encoder_hidden_states, controlnet_cond, added_cond_kwargs=added, return_dict=False
        )
        return (*down, mid)


def controlnet_spec(model) -> ExportSpec:
    config = model.config
    size = TRACE_LATENTS
    factor = 2 ** (len(config.conditioning_embedding_out_channels) - 1)  # its stride-2 image embedding
    inputs = {
        "sample": torch.randn(2, config.in_channels, size, size),
        "timestep": torch.tensor([999.0, 999.0]),
        "encoder_hidden_states": torch.randn(2, 77, config.cross_attention_dim),
        "controlnet_cond": torch.rand(2, config.conditioning_channels, size * factor, size * factor),
    }
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "sequence"},
        "controlnet_cond": {0: "batch", 2: "image_height", 3: "image_width"},
    }
    module: torch.nn.Module = _ControlNet(model)
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs |= {"text_embeds": torch.randn(2, pooled), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        axes |= {"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}}
        module = _ControlNetXL(model)
    with torch.no_grad():
        outputs = module(*inputs.values())
    names = tuple(f"down_block_res_sample_{i}" for i in range(len(outputs) - 1)) + ("mid_block_res_sample",)
    axes |= {name: {0: "batch", 2: f"{name}_height", 3: f"{name}_width"} for name in names}
    return ExportSpec(module, inputs, names, axes)


def _residual_shapes(spec: ExportSpec, model: Any) -> tuple[list[int], list[int]]:
    # Each residual's width, and how many times it is halved: read at a size that halves evenly.
    size = 2 ** len(model.config.block_out_channels)
    factor = spec.inputs["controlnet_cond"].shape[-1] // spec.inputs["sample"].shape[-1]
    inputs = dict(spec.inputs)
    inputs["sample"] = torch.randn(*inputs["sample"].shape[:2], size, size)
    inputs["controlnet_cond"] = torch.rand(*inputs["controlnet_cond"].shape[:2], size * factor, size * factor)
    with torch.no_grad():
        outputs = spec.module(*inputs.values())
    return [int(t.shape[1]) for t in outputs], [int(size // t.shape[-1]).bit_length() - 1 for t in outputs]


def _family(config: dict[str, Any]) -> str:
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return "sd2" if int(config.get("cross_attention_dim", 768)) == 1024 else "sd1"


def convert_controlnet(
    source: Path,
    staged: Path,
    target: tuple[str, str],
    progress: Callable[[str], None],
    *,
    config_dir: Path | None = None,
    named: str | None = None,
) -> ControlNetManifest:
    """Export the ControlNet folder or single file `source` into the new folder `staged`, manifest last.
    `target`: (format, precision); `config_dir`: a single file's config (controlnet_sources.py); `named`:
    what the manifest calls the source (a hub id), by default its path."""
    fmt, precision = target
    start = time.perf_counter()
    model = load_controlnet(source, config_dir)
    spec = controlnet_spec(model)
    (staged / COMPONENT).mkdir(parents=True)
    exact = component_precision(precision, COMPONENT)
    names = WRITERS[fmt](spec, staged / COMPONENT, exact)
    config = {k: v for k, v in dict(model.config).items() if k != "_name_or_path"}
    (staged / COMPONENT / "config.json").write_text(json.dumps(config, indent=2, default=str))
    files = [f"{COMPONENT}/{name}" for name in [*names, "config.json"]]
    channels, levels = _residual_shapes(spec, model)
    manifest = ControlNetManifest(
        source=named or str(source.resolve()),
        family=_family(config),
        format=fmt,
        precision=exact,
        cross_attention_dim=int(model.config.cross_attention_dim),
        residual_channels=channels,
        residual_levels=levels,
        files=describe_files(staged, files),
        global_pool_conditions=bool(model.config.global_pool_conditions),
        inputs=read_inputs(staged / COMPONENT / GRAPH_FILE[fmt]),
        versions=versions(fmt),
        extra={"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    write_manifest(staged, CONTROLNET_MANIFEST, manifest.to_json())
    progress(f"controlnet: exported to {fmt} {exact} in {time.perf_counter() - start:.1f} s")
    return manifest


def residual_widths(unet_config: dict[str, Any]) -> list[int]:
    """The width of each skip connection a UNet hands from its down blocks to its up blocks (conv_in's, then
    each layer's and each downsampler's), then its middle block's: what a ControlNet's residuals match."""
    widths = list(unet_config["block_out_channels"])
    layers = unet_config.get("layers_per_block", 2)
    count = len(unet_config["down_block_types"])
    skips = [widths[0]]
    for i in range(count):
        skips += [widths[i]] * (layers[i] if isinstance(layers, (list, tuple)) else layers)
        skips += [widths[i]] if i < count - 1 else []
    return [*skips, widths[-1]]


def write_residual_graph(folder: Path, unet_config: dict[str, Any]) -> list[str]:
    """ONNX only: beside `unet/model.onnx`, `model_controlnet.onnx`, the same graph with ControlNet's residual
    inputs added as runtime/controlnet/residuals.py adds them to an OpenVINO graph. ONNX Runtime cannot be
    given new inputs at run time, and the runtime does without the onnx package; this graph reads the same
    weights file, so it costs a few hundred kB, not a second copy of the weights."""
    import onnx
    from onnx import TensorProto, helper

    from sdcpu.runtime.controlnet.residuals import MID_NAME, UP_BLOCK, down_name

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    nodes = list(model.graph.node)
    concats = [n for n in nodes if n.op_type == "Concat" and len(n.input) == 2 and UP_BLOCK.search(n.name)]
    concats = [n for n in concats if next((a.i for a in n.attribute if a.name == "axis"), None) in (1, -3)]
    widths = residual_widths(unet_config)
    if len(concats) != len(widths) - 1:
        raise SdcpuError(f"the UNet's graph has {len(concats)} skip concatenations, its config {len(widths) - 1}")
    added: dict[str, Any] = {}  # the concatenation's name -> the Add nodes feeding it
    for k, concat in enumerate(concats):
        i = len(concats) - 1 - k
        slots = [(1, down_name(i), widths[i])] + ([(0, MID_NAME, widths[-1])] if k == 0 else [])
        for slot, name, width in slots:
            shape: list[str | int | None] = ["batch", width, f"{name}_height", f"{name}_width"]
            model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
            add = helper.make_node("Add", [concat.input[slot], name], [f"{name}_added"], name=f"/controlnet/{name}")
            concat.input[slot] = f"{name}_added"
            added.setdefault(concat.name, []).append(add)
    ordered = [node for n in nodes for node in [*added.get(n.name, []), n]]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save_model(model, str(folder / RESIDUAL_GRAPH))  # its weights stay in model.onnx_data
    onnx.checker.check_model(str(folder / RESIDUAL_GRAPH))
    return [RESIDUAL_GRAPH]
