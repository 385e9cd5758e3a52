"""Nearest 2x upsampling followed by a 3x3 convolution, computed as four 2x2 convolutions of the map
before upsampling whose outputs are interleaved: the same output for 2.25x fewer multiplications.

The resize-convolution (Odena, Dumoulin & Olah 2016, https://distill.pub/2016/deconv-checkerboard/)
is how SD's VAE decoder, TAESD and the UNet's upsamplers grow a map. Its sub-pixel form (Shi et al.
2016, https://arxiv.org/abs/1609.05158): with u[p, q] = x[p // 2, q // 2] the upsampled map and W
the 3x3 filter (padding 1), each output phase (a, b) in {0, 1}^2 reads only a 2x2 window of x,

    y[2i + a, 2j + b] = sum_{r, s in {0, 1}} W_ab[r, s] x[i + r - 1 + a, j + s - 1 + b],
    W_ab = C_a W C_b^T,  C_0 = [[1, 0, 0], [0, 1, 1]],  C_1 = [[1, 1, 0], [0, 0, 1]],

since the taps of W that fall on the same source pixel add up (for a = 0 the kernel's row 0 reads
source row i - 1 and rows 1 and 2 read row i). That is 4 x 4 multiply-adds per source pixel and
channel pair against 4 x 9 on the upsampled map. Exact within float rounding (the summed filters).

Why: with bf16 compute these convolutions run near the CPU's peak, so only fewer multiplications make
them faster; they are 28% of the SD VAE decoder's FLOPs and 18% of TAESD's at 512x512 output.
Int8 weights (an int8 or int8-hybrid VAE) are decompressed here, as the CPU plugin decompresses a
convolution's weights anyway; convolutions with int8 inputs (FakeQuantize between the upsampling and the
convolution, the int8-hybrid UNet) are left alone: summed weights leave the int8 grid.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from sdcpu.runtime.engines.passes.winograd import same_size_3x3

REVISION = 1  # in the key of cached compiled models: raise it whenever the rewritten graph changes
COLLAPSE = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float64)  # C_0, C_1
ARITHMETIC = {"Subtract": np.subtract, "Multiply": np.multiply}  # with Convert: a weight's decompression


def rewrite_upsampling_convolutions(model: ov.Model) -> int:
    """Replace every 3x3, stride-1, pad-1 convolution with constant weights that reads a nearest 2x
    upsampling (static shapes) by four 2x2 convolutions of the upsampling's input, in place. Returns
    how many were replaced."""
    count = 0
    for conv in model.get_ordered_ops():
        source = _nearest_2x_input(conv.input_value(0).get_node()) if same_size_3x3(conv) else None
        weights = _constant(conv.input_value(1).get_node()) if source is not None else None
        if source is not None and weights is not None:
            conv.output(0).replace(_sub_pixel(source, weights))
            count += 1
    return count


def _constant(node: ov.Node) -> np.ndarray | None:
    """The value of a weight: a Constant, or Converts, Subtracts and Multiplies of constants (an int8
    weight's decompression), computed in float32 as the CPU plugin decompresses (not rounded to the
    fp16 of the graph's scales). Else None."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float32)
    if kind != "Convert" and kind not in ARITHMETIC:
        return None
    values = [_constant(node.input_value(i).get_node()) for i in range(node.get_input_size())]
    args = [value for value in values if value is not None]
    if len(args) < len(values):
        return None
    return args[0] if kind == "Convert" else ARITHMETIC[kind](*args)


def _nearest_2x_input(node: ov.Node) -> ov.Output | None:
    """The input of a nearest-neighbour Interpolate that doubles height and width (x[p // 2]), else None."""
    if node.get_type_name() != "Interpolate":
        return None
    attrs = node.get_attributes()
    if attrs["mode"] != "nearest" or attrs["coordinate_transformation_mode"] != "asymmetric":
        return None
    if attrs["nearest_mode"] not in ("floor", "simple"):
        return None
    before, after = node.get_input_partial_shape(0), node.get_output_partial_shape(0)
    if not (before.is_static and after.is_static and before.rank.get_length() == 4):
        return None
    (n, c, h, w), (n2, c2, h2, w2) = before.to_shape(), after.to_shape()
    return node.input_value(0) if (n2, c2, h2, w2) == (n, c, 2 * h, 2 * w) else None


def _sub_pixel(x: ov.Output, weights: np.ndarray) -> ov.Output:
    # One 2x2 convolution per phase (a, b), padded so that its window starts at source (i - 1 + a, j - 1 + b);
    # the phases, stacked on the channel axis as (a, b, out), are interleaved by DepthToSpace.
    w = weights.astype(np.float64)
    phases = []
    for a in (0, 1):
        for b in (0, 1):
            filters = np.einsum("rk,oikl,sl->oirs", COLLAPSE[a], w, COLLAPSE[b]).astype(np.float32)
            pads_begin, pads_end = [1 - a, 1 - b], [a, b]
            phases.append(ops.convolution(x, ops.constant(filters), [1, 1], pads_begin, pads_end, [1, 1]))
    return ops.depth_to_space(ops.concat(phases, 1), "blocks_first", 2).output(0)
