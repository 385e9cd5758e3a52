"""Memory policies: how a pipeline holds its networks and splits its work. One object, chosen at load
(`--low-memory` or not), answers every question the loop has about memory; the loop never branches on it.

- `Resident` (the default): every network stays compiled between images; between phases only its
  buffers of intermediate results are freed (about 1 GB for SD 1.5's UNet at 512x512); guidance runs
  as one batch-2 UNet call; the VAE decodes the whole latent at once, up to a megapixel.
- `LowMemory`: one network in memory at a time (each is read on first use and dropped after its
  phase); guidance runs as batch-1 UNet calls, the same arithmetic with half the activations alive;
  the VAE decodes overlapping tiles (runtime/components/tiling.py; approximate, seams measured in docs/quality.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from sdcpu.runtime.components.tiling import decode_tiled
from sdcpu.runtime.engines import Model

# Working memory per pixel, from SD 1.5 at 512x512 on a 2-core AMD EPYC Zen 3 (docs/benchmarks.md): the UNet's
# buffers held 1.15 GB for a batch of 2 samples of 64x64 latents (about 0.6 GB each), the VAE decoder 1.35 GB
# per 512x512 image. Upper bounds for smaller models, which need less.
UNET_BYTES_PER_LATENT_PIXEL = 0.6e9 / 64**2
# The x4 upscaler's UNet has no self-attention (cross-attention only, to 77 tokens), so its buffers grow with
# its widest level's convolutions alone; measured in bench/modes.py (docs/modes.md).
UPSCALER_BYTES_PER_LATENT_PIXEL = 12e3
DECODER_BYTES_PER_PIXEL = 1.35e9 / 512**2
# Tiles of 40x40 latents (320x320 pixels for SD) that share at least 8 latent pixels: 2x2 tiles for
# 512x512, each with 39% of the whole image's decoder activations.
VAE_TILE, VAE_TILE_OVERLAP = 40, 8
# Above a megapixel even the resident policy decodes in tiles (of 512x512 pixels sharing 64): the x4
# upscaler's 2048x2048 output would hold about 2 GB per activation of its decoder's last level whole.
WHOLE_DECODE_PIXELS, DECODE_TILE_PIXELS, DECODE_OVERLAP_PIXELS = 1024 * 1024, 512, 64


class MemoryPolicy(Protocol):
    name: str
    lazy: bool  # read each network on first use, not at load

    def free(self, model: Model) -> None: ...

    def batches(self, size: int) -> list[slice]: ...

    def decode(self, decoder: Model, latents: np.ndarray, scale_factor: int) -> np.ndarray: ...

    def working_bytes(self, samples: int, unet_latents: int, pixels: int, unet_bytes: float) -> float: ...


class Resident:
    name, lazy = "resident", False

    def free(self, model: Model) -> None:
        model.release_memory()  # the compiled weights stay for the next image

    def batches(self, size: int) -> list[slice]:
        return [slice(None)]

    def decode(self, decoder: Model, latents: np.ndarray, scale_factor: int) -> np.ndarray:
        if latents.shape[-2] * latents.shape[-1] * scale_factor**2 <= WHOLE_DECODE_PIXELS:
            return decoder(latent_sample=latents)
        decode = lambda z: decoder(latent_sample=z)  # noqa: E731
        tile, overlap = DECODE_TILE_PIXELS // scale_factor, DECODE_OVERLAP_PIXELS // scale_factor
        return decode_tiled(decode, latents, scale_factor, tile, overlap)

    def working_bytes(self, samples: int, unet_latents: int, pixels: int, unet_bytes: float) -> float:
        """About the most memory the networks' intermediate results take at once, one phase at a time:
        `samples` UNet rows (2 per image with guidance) of `unet_latents` latent pixels (a tile's, when
        tiled) at `unet_bytes` each, and the decode of images of `pixels` pixels."""
        decoded = pixels if pixels <= WHOLE_DECODE_PIXELS else DECODE_TILE_PIXELS**2
        return max(samples * unet_latents * unet_bytes, samples / 2 * decoded * DECODER_BYTES_PER_PIXEL)


class LowMemory:
    name, lazy = "low-memory", True

    def free(self, model: Model) -> None:
        model.release()

    def batches(self, size: int) -> list[slice]:
        return [slice(i, i + 1) for i in range(size)]

    def decode(self, decoder: Model, latents: np.ndarray, scale_factor: int) -> np.ndarray:
        decode = lambda z: decoder(latent_sample=z)  # noqa: E731
        return decode_tiled(decode, latents, scale_factor, VAE_TILE, VAE_TILE_OVERLAP)

    def working_bytes(self, samples: int, unet_latents: int, pixels: int, unet_bytes: float) -> float:
        # one UNet row per call; one decoder tile (VAE_TILE latents, 320x320 pixels for SD) at a time
        return max(unet_latents * unet_bytes, min(pixels, (VAE_TILE * 8) ** 2) * DECODER_BYTES_PER_PIXEL)


def machine_bytes() -> int | None:
    """Physical memory plus swap, the most a process could ever hold (Linux; None elsewhere)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    return sum(int(fields.get(key, "0 kB").split()[0]) * 1024 for key in ("MemTotal", "SwapTotal"))


def memory_policy(low_memory: bool) -> MemoryPolicy:
    """The policy for `LoadOptions.low_memory`."""
    return LowMemory() if low_memory else Resident()
