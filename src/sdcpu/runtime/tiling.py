"""Tiled VAE decoding: decode overlapping latent tiles one at a time and blend them, so that the
decoder's activations (the largest tensors of a generation: 128 channels at full resolution) are
held for one tile instead of the whole image.

The blend is a weighted average with weights that ramp linearly across each overlap, as in
diffusers' `AutoencoderKL.tiled_decode`. It is not exact: GroupNorm statistics and the mid-block's
attention see one tile, not the image, which can show as faint seams (measured in docs/quality.md).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of size `tile` that cover `length` with consecutive tiles
    sharing at least `overlap`, spread evenly (so no tile is mostly a repeat of its neighbour)."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(size: int, ramp: int, up: bool, down: bool) -> np.ndarray:
    weight = np.ones(size, dtype=np.float32)
    steps = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp  # never 0, so every pixel has some weight
    if up:
        weight[:ramp] = steps
    if down:
        weight[size - ramp :] = steps[::-1]
    return weight


def decode_tiled(
    decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, scale: int, tile: int, overlap: int
) -> np.ndarray:
    """Decode (N, C, h, w) latents with `decode` tile by tile (tiles of `tile` latent pixels sharing
    `overlap`); `scale` is the decoder's upsampling factor. Returns (N, 3, h*scale, w*scale)."""
    n, _, h, w = latents.shape
    out = np.zeros((n, 3, h * scale, w * scale), dtype=np.float32)
    total = np.zeros((h * scale, w * scale), dtype=np.float32)
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    for y in rows:
        for x in cols:
            pixels = decode(np.ascontiguousarray(latents[:, :, y : y + tile, x : x + tile]))
            th, tw = pixels.shape[-2:]
            wy = _ramp(th, overlap * scale, y > 0, y != rows[-1])
            wx = _ramp(tw, overlap * scale, x > 0, x != cols[-1])
            weight = np.outer(wy, wx)
            ys, xs = slice(y * scale, y * scale + th), slice(x * scale, x * scale + tw)
            out[:, :, ys, xs] += pixels * weight
            total[ys, xs] += weight
    return out / total
