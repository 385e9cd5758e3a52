"""Token downsampling (ToDo): the UNet's highest-resolution self-attention attends to keys and values
taken on a coarser grid, before the graph is compiled. Opt-in: it changes the image.

Smith et al. 2024, "ToDo: Token Downsampling for Efficient Generation of High-Resolution Images",
https://arxiv.org/abs/2402.13573: neighbouring latent tokens are nearly alike, so self-attention

    softmax(Q K^T / sqrt(d)) V,   Q, K, V: [batch, heads, H*W, d]

loses little when K and V keep only one token of every f x f block (nearest-exact, their default),
while the queries keep them all: the output keeps its H*W tokens, and QK^T and the product with V cost
f^2 times less. As in the paper, only the level of the largest token count is changed (SD 1.5 at
512x512: the five 64x64 self-attentions, 4096 tokens each); cross-attention (77 text tokens) is not.

Why here: those five self-attentions are 22% of an SD 1.5 UNet step on the CPU (OpenVINO's per-layer
profile, fp32 with Winograd, 512x512, batch 2: 1.6 of 7.4 s), and they are also the bulk of DeepCache's
shallow pass. Picking K's and V's tokens after their projections equals projecting the picked hidden
states, since a projection acts on each token alone.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

REVISION = 1  # in the key of cached compiled models: raise it whenever the rewritten graph changes


def nearest_exact(size: int, factor: int) -> list[int]:
    """The source index of each of the ceil(size / factor) outputs of a nearest-exact resize
    (PyTorch's `interpolate(mode="nearest-exact")`: the input pixel under each output pixel's centre)."""
    count = -(-size // factor)
    return [min(size - 1, int((i + 0.5) * size / count)) for i in range(count)]


def downsample_self_attention(model: ov.Model, factor: int) -> int:
    """Make the highest-resolution self-attentions of a UNet graph with static shapes attend to every
    `factor`-th key and value token along each axis, in place. Returns how many were changed."""
    if factor < 2:
        return 0
    height, width = _latent_size(model)
    attentions = [op for op in model.get_ordered_ops() if _is_self_attention(op)]
    if not attentions:
        return 0
    tokens = max(_tokens(op) for op in attentions)
    while height * width > tokens:  # each down block halves the map (stride 2, padding 1: ceil)
        height, width = -(-height // 2), -(-width // 2)
    if height * width != tokens:
        return 0  # the attention's tokens are not a map of this UNet
    picked = [r * width + c for r in nearest_exact(height, factor) for c in nearest_exact(width, factor)]
    indices, axis = ops.constant(np.array(picked, np.int64)), ops.constant(np.int64(2))
    changed = [op for op in attentions if _tokens(op) == tokens]
    for op in changed:
        for port in (1, 2):  # keys, values
            op.input(port).replace_source_output(ops.gather(op.input_value(port), indices, axis).output(0))
    model.validate_nodes_and_infer_types()
    return len(changed)


def _latent_size(model: ov.Model) -> tuple[int, int]:
    shape = model.input("sample").get_partial_shape()
    return shape[2].get_length(), shape[3].get_length()


def _is_self_attention(op: ov.Node) -> bool:
    if op.get_type_name() != "ScaledDotProductAttention":
        return False
    query, key = op.get_input_partial_shape(0), op.get_input_partial_shape(1)
    return query.rank.get_length() == 4 and key.is_static and query[2] == key[2]


def _tokens(op: ov.Node) -> int:
    return op.get_input_partial_shape(1)[2].get_length()
