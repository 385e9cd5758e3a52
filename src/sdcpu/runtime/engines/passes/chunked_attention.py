"""Chunked attention: each large attention computed over slices of its queries, so that no more than a
slice of the score matrix is ever held. Exact: softmax normalises each query's row on its own.

Rabe & Staats 2021, "Self-attention Does Not Need O(n^2) Memory", https://arxiv.org/abs/2112.05682
(their query chunking): for queries Q = [Q_1; ...; Q_n] split by rows,

    softmax(Q K^T / sqrt(d)) V = [softmax(Q_1 K^T / sqrt(d)) V; ...; softmax(Q_n K^T / sqrt(d)) V]

Why: in a graph with FakeQuantize (the int8-hybrid precision), OpenVINO's CPU plugin on AVX2 runs
ScaledDotProductAttention as separate MatMul, Softmax and MatMul nodes instead of its fused kernel, and
keeps the whole score matrix: [1, 8, 4096, 4096] float32, 0.54 GB, for each 64x64 self-attention of
SD 1.5 at 512x512 and one sample. That buffer was almost all of the UNet's intermediate memory (0.565 GB
at batch 1). The slices run one after the other, so the plugin's memory planner gives them one
buffer: 0.11 GB in all, and the step was faster too (4.22 against 4.44 s at batch 1).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

REVISION = 1  # in the key of cached compiled models: raise it whenever the rewritten graph changes
MAX_SCORE_BYTES = 64 << 20  # the largest float32 score matrix a slice may hold


def split_queries(model: ov.Model, max_bytes: int = MAX_SCORE_BYTES) -> int:
    """Split every attention of a graph with static shapes whose float32 score matrix [batch, heads,
    queries, keys] exceeds `max_bytes` into slices of its queries, in place. Only graphs holding
    FakeQuantize nodes are changed (others keep OpenVINO's fused attention). Returns how many were split."""
    ops_in_order = model.get_ordered_ops()
    if not any(op.get_type_name() == "FakeQuantize" for op in ops_in_order):
        return 0
    count = 0
    for op in ops_in_order:
        lengths = _slices(op, max_bytes)
        if lengths:
            _split(op, lengths)
            count += 1
    model.validate_nodes_and_infer_types()
    return count


def _slices(op: ov.Node, max_bytes: int) -> list[int]:
    """The query counts of the slices of an attention that needs splitting, else []."""
    if op.get_type_name() != "ScaledDotProductAttention" or len(op.inputs()) != 3 or op.get_attributes()["causal"]:
        return []  # a mask, an explicit scale or a causal mask would depend on the slice's place
    query, key = op.get_input_partial_shape(0), op.get_input_partial_shape(1)
    if not (query.is_static and key.is_static and query.rank.get_length() == 4):
        return []
    batch, heads, queries, _ = (int(d) for d in query.to_shape())
    row_bytes = batch * heads * int(key.to_shape()[2]) * 4
    per_slice = max(1, max_bytes // row_bytes)
    if per_slice >= queries:
        return []
    return [min(per_slice, queries - start) for start in range(0, queries, per_slice)]


def _split(op: ov.Node, lengths: list[int]) -> None:
    axis = ops.constant(np.int64(2))
    parts = ops.variadic_split(op.input_value(0), axis, ops.constant(np.array(lengths, np.int64)))
    keys, values = op.input_value(1), op.input_value(2)
    slices = [ops.scaled_dot_product_attention(part, keys, values, causal=False) for part in parts.outputs()]
    op.output(0).replace(ops.concat(slices, 2).output(0))
