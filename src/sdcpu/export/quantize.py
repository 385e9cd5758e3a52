"""Low-precision exports: which precision each component gets, and how its weights are compressed.

- `fp16`: weights stored in float16, compute in float32 (size only).
- `int8`: 8-bit weights for every component, compute in float32. OpenVINO: NNCF weight compression
  (asymmetric, per output channel), decompressed inside the compiled kernels. ONNX: each large weight
  is stored as int8 with a per-channel scale and a DequantizeLinear node (symmetric, axis 0).
- `int8-hybrid` (OpenVINO): int8 weights everywhere, plus int8 activations on the UNet's convolutions,
  calibrated on UNet inputs collected by running the float model on prompts. This is NNCF's hybrid
  recipe for diffusion models (as in optimum-intel): activation quantization of the attention and
  feed-forward MatMuls is what ruins Stable Diffusion images, so those keep float activations (on the
  demo model, quantizing them too lost 11.2 points of accuracy; docs/benchmarks.md). Few-step models
  keep the attentions and the UNet's first and last convolution in float too (`HybridRecipe`).
- `int4` (OpenVINO): 4-bit weights (symmetric, groups of 64) for the UNet, its shallow DeepCache
  pass and the text encoder, 8-bit for the VAE; NNCF keeps the first and last layers at 8 bits.
  With int8-hybrid the shallow pass gets int8 weights only: it is not calibrated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PRECISIONS = {
    "openvino": ("fp32", "fp16", "int8", "int8-hybrid", "int4"),
    "onnx": ("fp32", "fp16", "int8"),
}
INT4_GROUP_SIZE = 64


@dataclass(frozen=True)
class HybridRecipe:
    """What int8-hybrid keeps in float besides the MatMuls with weights. A few-step model's 1-step image
    is the UNet's x0 = (x_T - sqrt(1 - a_T) eps) / sqrt(a_T) (DDPM, https://arxiv.org/abs/2006.11239,
    eq. 15), which multiplies the UNet's error by 1 / sqrt(a_T), about 15 for SD: on the few-step demo,
    float attention and first and last convolutions take 1-step images from 80.4% to 86.2% (full
    decoder; the fp16 model: 85.4%). On the 20-step demo the same cost 0.9-3.3 points, so other models
    keep NNCF's recipe (docs/quality.md)."""

    float_attention: bool = False
    float_boundaries: bool = False  # the first convolution after an input, the last before an output


NNCF_RECIPE = HybridRecipe()
FEW_STEP_RECIPE = HybridRecipe(float_attention=True, float_boundaries=True)


def component_precision(precision: str, component: str) -> str:
    """The precision `component` is exported at when the whole model is asked for `precision`."""
    if component.startswith("tiny_vae"):  # 1.2M weights: 8 bits would cost quality and save nothing
        return "fp32" if precision == "fp32" else "fp16"
    if precision == "int8-hybrid":
        return "int8-hybrid" if component == "unet" else "int8"
    if precision == "int4":
        return "int4" if component in ("unet", "unet_shallow", "text_encoder", "text_encoder_2") else "int8"
    return precision


def compress_openvino(
    model: Any,
    precision: str,
    calibration: Sequence[dict[str, np.ndarray]] = (),
    recipe: HybridRecipe = NNCF_RECIPE,
) -> Any:
    """Compress an `openvino.Model` in place of its float weights; fp32 and fp16 pass through."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    nncf.set_log_level(logging.WARNING)  # NNCF's per-layer tables would drown convert's progress lines
    if precision == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if precision == "int4":
        # Layers whose input width is not a multiple of the group size get the largest group that fits.
        adjust = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
        return nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT4_SYM,
            group_size=INT4_GROUP_SIZE,
            ratio=1.0,
            advanced_parameters=adjust,
        )
    if precision == "int8-hybrid":
        return _hybrid(model, calibration, recipe)
    return model


def _hybrid(model: Any, calibration: Sequence[dict[str, np.ndarray]], recipe: HybridRecipe) -> Any:
    import nncf

    if not calibration:
        raise ValueError("int8-hybrid needs calibration samples")
    # Read before weight compression, which puts a decompression between each MatMul and its weight.
    kept_float = _matmuls_with_constant_weights(model)
    kept_float += _boundary_convolutions(model) if recipe.float_boundaries else []
    # Weight-only int8 for everything but convolutions; those get int8 weights *and* activations (but the
    # first and last of a few-step recipe: float, weights too; in SD 1.5's UNet, 23k of 860M weights).
    compressed = nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(types=["Convolution"]),
    )
    float_types = ["ScaledDotProductAttention"] if recipe.float_attention else []
    return nncf.quantize(
        compressed,
        nncf.Dataset(list(calibration)),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=kept_float, types=float_types, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1),
    )


def _matmuls_with_constant_weights(model: Any) -> list[str]:
    """MatMuls and embedding lookups (Gather) with a weight: weight-only int8, float activations."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        producers = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if any(_is_constant(p) for p in producers):
            names.append(op.get_friendly_name())
    return names


def _boundary_convolutions(model: Any, depth: int = 6) -> list[str]:
    """The first convolution after each input and the last before each output, found within `depth`
    ops that are neither convolutions nor MatMuls."""
    found: list[str] = []
    for start, forward in [(p, True) for p in model.get_parameters()] + [(r, False) for r in model.get_results()]:
        frontier = [start]
        for _ in range(depth):
            nodes = [n for node in frontier for n in _neighbours(node, forward)]
            found += [n.get_friendly_name() for n in nodes if n.get_type_name() == "Convolution"]
            frontier = [n for n in nodes if n.get_type_name() not in ("Convolution", "MatMul", "Constant")]
    return sorted(set(found))


def _neighbours(node: Any, forward: bool) -> list[Any]:
    if forward:
        return [target.get_node() for output in node.outputs() for target in output.get_target_inputs()]
    return [node.input_value(i).get_node() for i in range(node.get_input_size())]


def _is_constant(node: Any) -> bool:
    # A weight reaches its consumer directly or through a Convert (fp16 weights) node.
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def store_onnx_weights_int8(model: Any, min_elements: int = 1024) -> None:
    """Replace each large float32 weight (2-D or more) of an ONNX model by int8 + a per-channel scale
    + DequantizeLinear: w = scale[c] * q, q = round(w / scale[c]), scale[c] = max|w[c]| / 127."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    dequantize, scales = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or len(init.dims) < 2 or np.prod(init.dims) < min_elements:
            continue
        weight = numpy_helper.to_array(init)
        peak = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shaped = scale.reshape(-1, *([1] * (weight.ndim - 1)))
        q = np.clip(np.round(weight / shaped), -127, 127).astype(np.int8)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(q, name + "_int8"))
        scales.append(numpy_helper.from_array(scale, name + "_scale"))
        node = helper.make_node("DequantizeLinear", [name + "_int8", name + "_scale"], [name], axis=0)
        node.name = name + "_dequantize"
        dequantize.append(node)
    graph.initializer.extend(scales)
    nodes = dequantize + list(graph.node)  # topological order: dequantization first
    del graph.node[:]
    graph.node.extend(nodes)
