"""An invisible watermark, opt-in (`--watermark`): the invisible-watermark package's "dwtDct" method
with the payload the reference Stable Diffusion scripts embed, so that its decoder reads ours.

The reference scripts (CompVis' txt2img.py) watermark every image by default with the bytes
"StableDiffusionV1"; sdcpu makes it a choice. The method, on the U channel of YUV: a Haar wavelet
transform, whose approximation band is cut into 4x4 blocks; in each block the largest AC coefficient
c is moved to the quarter of its quantization step that codes the block's bit,

    |c| -> (floor(|c| / 36) + 0.25 + 0.5 * bit) * 36,

the bits taken in turn from the payload. Decoding reads each block's bit from where |c| falls in its
step and takes the majority over the blocks that carry the same bit. Here in numpy alone: a change
of a Haar approximation coefficient by d changes each of its 2x2 pixels by d / 2, so the inverse
transform is one addition. Images need at least 256x256 pixels, as the package requires. The mark
lives in the colour (U): an image of pure black and white, where no colour can move, cannot carry it.
"""

from __future__ import annotations

import numpy as np

PAYLOAD = b"StableDiffusionV1"
SCALE, BLOCK = 36.0, 4
MIN_PIXELS = 256 * 256
# OpenCV's RGB <-> YUV (COLOR_BGR2YUV, COLOR_YUV2BGR), which the package uses.
TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]], np.float64)
TO_RGB = np.array([[1.0, 0.0, 1.13983], [1.0, -0.39465, -0.58060], [1.0, 2.03211, 0.0]], np.float64)
OFFSET = np.array([0.0, 128.0, 128.0])  # U and V of 8-bit images are centred on 128


def payload_bits(payload: bytes = PAYLOAD) -> np.ndarray:
    return np.unpackbits(np.frombuffer(payload, np.uint8))


def embed(rgb: np.ndarray, payload: bytes = PAYLOAD) -> np.ndarray:
    """Watermark an (H, W, 3) uint8 RGB image; returns a new uint8 image."""
    yuv = rgb.astype(np.float64) @ TO_YUV.T + OFFSET
    height, width = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4
    u = yuv[:height, :width, 1]
    approx = _haar_approximation(u)
    marked = _mark(approx, payload_bits(payload))
    u += np.kron(marked - approx, np.ones((2, 2))) / 2  # the inverse Haar transform of the change
    return np.clip(np.rint((yuv - OFFSET) @ TO_RGB.T), 0, 255).astype(np.uint8)


def extract(rgb: np.ndarray, length: int = len(PAYLOAD)) -> bytes:
    """The `length`-byte payload read from an (H, W, 3) uint8 RGB image."""
    yuv = rgb.astype(np.float64) @ TO_YUV.T + OFFSET
    height, width = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4
    votes = _blocks(_haar_approximation(yuv[:height, :width, 1]))
    bits = (np.abs(votes) % SCALE > SCALE / 2).astype(np.float64)
    count = length * 8
    means = [bits[i::count].mean() for i in range(count)]
    return np.packbits(np.array(means) > 0.5).tobytes()


def _haar_approximation(x: np.ndarray) -> np.ndarray:
    return (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 2


def _largest_ac(block: np.ndarray) -> tuple[int, int]:
    position = int(np.argmax(np.abs(block.flatten()[1:]))) + 1
    return position // BLOCK, position % BLOCK


def _blocks(approx: np.ndarray) -> np.ndarray:
    """Each block's largest AC coefficient, blocks in row-major order."""
    rows, cols = approx.shape[0] // BLOCK, approx.shape[1] // BLOCK
    values = []
    for i in range(rows):
        for j in range(cols):
            block = approx[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
            values.append(block[_largest_ac(block)])
    return np.array(values)


def _mark(approx: np.ndarray, bits: np.ndarray) -> np.ndarray:
    marked = approx.copy()
    rows, cols = approx.shape[0] // BLOCK, approx.shape[1] // BLOCK
    for n in range(rows * cols):
        i, j = divmod(n, cols)
        block = marked[i * BLOCK : (i + 1) * BLOCK, j * BLOCK : (j + 1) * BLOCK]
        where = _largest_ac(block)
        value, others = block[where], np.abs(np.delete(block.flatten(), [0, where[0] * BLOCK + where[1]]))
        size = (abs(value) // SCALE + 0.25 + 0.5 * bits[n % len(bits)]) * SCALE
        # The package rounds down, which can leave another coefficient the largest, and its decoder then
        # reads the wrong one; a step up keeps the bit and keeps this coefficient the one read.
        while others.size and size <= others.max():
            size += SCALE
        block[where] = np.sign(value or 1.0) * size
    return marked
