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


def even_tiles(length: int, largest: int, overlap: int) -> tuple[int, list[int]]:
    """The fewest tiles of at most `largest` that cover `length` sharing at least `overlap`, made as small
    as that count allows (so little is computed twice), in multiples of 8 (the UNet halves them three
    times): (tile size, start offsets)."""
    if length <= largest:
        return length, [0]
    count = -(-(length - overlap) // (largest - overlap))
    tile = min(length, -(-(length + (count - 1) * overlap) // (count * 8)) * 8)
    return tile, tile_starts(length, tile, overlap)


def denoise_tiled(
    predict: Callable[[np.ndarray], np.ndarray], sample: np.ndarray, largest: int, overlap: int
) -> np.ndarray:
    """The UNet's prediction for (N, C, h, w) `sample`, tile by tile, blended with the same linear ramps
    as `decode_tiled` (MultiDiffusion's averaging of overlapping windows, Bar-Tal et al.,
    https://arxiv.org/abs/2302.08113, eq. 5, with feathered weights). The scheduler then steps the whole
    latent, so neighbouring tiles agree at every step instead of meeting only at the end."""
    n, _, h, w = sample.shape
    (th, rows), (tw, cols) = even_tiles(h, largest, overlap), even_tiles(w, largest, overlap)
    out: np.ndarray | None = None
    total = np.zeros((h, w), dtype=np.float32)
    for y in rows:
        for x in cols:
            part = predict(np.ascontiguousarray(sample[:, :, y : y + th, x : x + tw]))
            if out is None:
                out = np.zeros((n, part.shape[1], h, w), dtype=np.float32)
            weight = np.outer(_ramp(th, overlap, y > 0, y != rows[-1]), _ramp(tw, overlap, x > 0, x != cols[-1]))
            out[:, :, y : y + th, x : x + tw] += part * weight
            total[y : y + th, x : x + tw] += weight
    assert out is not None
    return out / total
