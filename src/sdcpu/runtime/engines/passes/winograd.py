"""Winograd convolution: 3x3 convolutions rewritten into OpenVINO ops that do 2.25x (F(2x2, 3x3)) or
4x (F(4x4, 3x3)) fewer multiplications, before the graph is compiled.

Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", https://arxiv.org/abs/1509.09308,
eq. 8: an m x m output tile Y of the 3x3 filter g over an (m+2) x (m+2) input tile d is

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

Why: OpenVINO's CPU plugin runs 3x3 convolutions as direct convolutions on AVX2 CPUs (its per-layer
profile shows jit_avx2 kernels), and they are 58% of the FLOPs of an SD 1.5 UNet step. The element-wise
product over all channels is a batched matrix multiplication: for each of the (m+2)^2 tile positions,
U [out, in] @ V [in, tiles].

The graph below maps the paper's notation to tensors: the padded input is cut into 2x2 blocks
(SpaceToDepth), and one Gather picks the (m/2+1)^2 blocks of every tile's d; B^T d B is one
MatMul over the tile positions; G g G^T is computed here in float64; A^T (.) A is one MatMul, and
DepthToSpace puts the output tiles in place. The result equals the convolution within float32
rounding: at most 2e-5 of the output's scale for F(4x4, 3x3) against a float64 reference, where
OpenVINO's direct convolution is at 5e-6.

The cost: U holds (m+2)^2 / 9 times the filter's values (4x for F(4x4, 3x3)), so the compiled model is
larger; see `tile_size` for where each is used.
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

REVISION = 2  # in the key of cached compiled models: raise it whenever the rewritten graph changes

# (B^T, G, A^T) of F(m x m, 3 x 3), from the paper's section 4.1 (m = 2) and 4.2 (m = 4).
TRANSFORMS = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ],
        [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def tile_size(height: int, width: int, channels: int) -> int | None:
    """The output tile m for a 3x3 convolution on a height x width map, or None to keep it direct.
    F(4x4, 3x3) on maps of 32x32 and more, F(2x2, 3x3) on 16x16; smaller maps and thin layers gain
    nothing, since reading the larger filters then costs more than the multiplications saved."""
    if channels < 32:
        return None
    if height >= 32 and width >= 32 and height % 4 == 0 and width % 4 == 0:
        return 4
    if height >= 16 and width >= 16 and height % 2 == 0 and width % 2 == 0:
        return 2
    return None


def rewrite_convolutions(model: ov.Model) -> int:
    """Replace every 3x3, stride-1, pad-1 convolution of `model` (static shapes, float weights) that
    `tile_size` picks by its Winograd form, in place. Returns how many were replaced."""
    count = 0
    for conv in model.get_ordered_ops():
        weights = float_filter_3x3(conv)
        if weights is None or not conv.get_input_partial_shape(0).is_static:
            continue
        batch, _, height, width = (int(d) for d in conv.get_input_partial_shape(0).to_shape())
        m = tile_size(height, width, min(weights.shape[:2]))
        if m is not None:
            conv.output(0).replace(_winograd(conv.input_value(0), weights, m, (batch, height, width)))
            count += 1
    return count


def same_size_3x3(conv: ov.Node) -> bool:
    """Whether `conv` is a 3x3, stride-1, pad-1 convolution: its output the size of its input."""
    if conv.get_type_name() != "Convolution" or not conv.get_input_partial_shape(1).is_static:
        return False
    attrs = conv.get_attributes()
    if attrs["strides"] != [1, 1] or attrs["dilations"] != [1, 1] or attrs["auto_pad"] != "explicit":
        return False
    same = attrs["pads_begin"] == [1, 1] and attrs["pads_end"] == [1, 1]
    return same and tuple(conv.get_input_partial_shape(1).to_shape())[2:] == (3, 3)


def float_filter_3x3(conv: ov.Node) -> np.ndarray | None:
    """The float filter [out, in, 3, 3] of a 3x3, stride-1, pad-1 convolution (what F(m x m, 3 x 3)
    computes), else None."""
    if not same_size_3x3(conv):
        return None
    source = conv.input_value(1).get_node()
    if source.get_type_name() == "Convert":  # fp16 weights, converted when compiled
        source = source.input_value(0).get_node()
    if source.get_type_name() != "Constant" or source.get_element_type() not in (ov.Type.f32, ov.Type.f16):
        return None
    return source.get_data()


def _i64(values: list[int]) -> ov.Node:
    return ops.constant(np.array(values, np.int64))


def _winograd(x: ov.Output, weights: np.ndarray, m: int, shape: tuple[int, int, int]) -> ov.Output:
    bt, g, at = (np.array(t, np.float64) for t in TRANSFORMS[m])
    (out_ch, in_ch), a, (batch, height, width) = weights.shape[:2], m + 2, shape
    th, tw = height // m, width // m  # tiles per column and per row
    # 1. Pad by one and cut into 2x2 blocks: blocks[n, (bi, bj, c), i, j] = padded[n, c, 2i+bi, 2j+bj].
    padded = ops.pad(x, _i64([0, 0, 1, 1]), _i64([0, 0, 1, 1]), "constant")
    grid = (height // 2 + 1, width // 2 + 1)
    blocks = ops.reshape(
        ops.space_to_depth(padded, "blocks_first", 2), _i64([batch, 4 * in_ch, grid[0] * grid[1]]), False
    )
    # 2. d: tile (ti, tj) starts at block (ti m/2, tj m/2) and spans a/2 x a/2 blocks; block (di, dj) of
    #    every tile, one Gather for all (strided Slices ran slower and OpenVINO kept each one's buffer).
    index, positions = [], []
    for di in range(a // 2):
        for dj in range(a // 2):
            rows, cols = di + m // 2 * np.arange(th), dj + m // 2 * np.arange(tw)
            index.append((rows[:, None] * grid[1] + cols[None, :]).ravel())
            positions += [(2 * di + bi) * a + 2 * dj + bj for bi in (0, 1) for bj in (0, 1)]
    d = ops.gather(blocks, ops.constant(np.stack(index).astype(np.int32)), _i64([2]))  # [n, 4 in, blocks, tiles]
    d = ops.reshape(ops.transpose(d, _i64([0, 2, 1, 3])), _i64([batch, a * a, in_ch * th * tw]), False)
    # 3. V = B^T d B for all tiles at once: kron(B^T, B^T) acts on the flattened a x a tile.
    transform_in = np.kron(bt, bt)[:, positions].astype(np.float32)
    v = ops.matmul(ops.constant(transform_in), d, False, False)
    v = ops.reshape(v, _i64([batch, a * a, in_ch, th * tw]), False)
    # 4. U = G g G^T per filter, then the a*a products U [out, in] @ V [in, tiles].
    u = np.kron(g, g) @ weights.reshape(out_ch * in_ch, 9).astype(np.float64).T  # one GEMM for all filters
    filters = u.astype(np.float32).reshape(a * a, out_ch, in_ch)
    product = ops.matmul(ops.constant(filters, shared_memory=True), v, False, False)
    product = ops.reshape(product, _i64([batch, a * a, out_ch * th * tw]), False)
    # 5. Y = A^T (U ⊙ V) A, then each tile's m x m outputs moved into place.
    y = ops.matmul(ops.constant(np.kron(at, at).astype(np.float32)), product, False, False)
    y = ops.reshape(y, _i64([batch, m * m * out_ch, th, tw]), False)
    return ops.depth_to_space(y, "blocks_first", m).output(0)
