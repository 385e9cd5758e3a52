"""The check before any work that a generation fits this machine's memory, and what would fit if not."""

from __future__ import annotations

from collections.abc import Callable

from sdcpu.errors import SdcpuError
from sdcpu.runtime.memory import (
    UNET_BYTES_PER_LATENT_PIXEL,
    UPSCALER_BYTES_PER_LATENT_PIXEL,
    MemoryPolicy,
    machine_bytes,
)
from sdcpu.runtime.settings import SCALE, GenerationSettings

IMAGE_BYTES_PER_PIXEL = 4 * 3 * 4  # float32 RGB, held about four times over (decoded, blended, [0, 1], 8-bit)


def memory_need(s: GenerationSettings, policy: MemoryPolicy, weights: int, f: int, side: int | None = None) -> float:
    """The weights' bytes and the largest phase's buffers: for the upscaler, a tile's UNet (`side`: square
    outputs of that many pixels instead of the settings' size). `f`: the VAE's scale factor."""
    samples = s.num_images * (2 if s.guidance > 1.0 else 1)
    width, height = (side, side) if side else (s.width, s.height)
    latents, unet_bytes = height * width // f**2, UNET_BYTES_PER_LATENT_PIXEL
    if s.upscale is not None:
        tile = s.upscale.tile
        latents, unet_bytes = min(height // f, tile) * min(width // f, tile), UPSCALER_BYTES_PER_LATENT_PIXEL
    working = policy.working_bytes(samples, latents, height * width, unet_bytes)
    return working + s.num_images * height * width * IMAGE_BYTES_PER_PIXEL + weights


def check_memory(s: GenerationSettings, policy: MemoryPolicy, weights: int, f: int, low_memory: bool) -> None:
    """Raise SdcpuError, saying what to lower, when `s` needs more than this machine's memory and swap."""
    need, have = memory_need(s, policy, weights, f), machine_bytes()
    if have is None or need <= have:
        return
    hint = "" if low_memory else ", or use --low-memory"
    if s.upscale is None:  # the largest square, in steps of 64 pixels, that fits as asked
        side = _largest(lambda n: memory_need(s, policy, weights, f, n * 64) <= have, min(s.width, s.height) // 64) * 64
        hint = f" (about {side}x{side} fits){hint}" if side else f" (no size fits){hint}"
    else:
        side = _largest(lambda n: memory_need(s, policy, weights, f, n * 8 * SCALE) <= have, s.width // SCALE // 8) * 8
        hint = f"; {f'inputs up to about {side}x{side} fit' if side else 'no input fits'}, or lower --tile"
    raise SdcpuError(
        f"{s.num_images} image(s) of {s.width}x{s.height} need about {need / 1e9:,.0f} GB, and this machine "
        f"has {have / 1e9:,.0f} GB of memory and swap: lower the size or --num-images{hint}"
    )


def _largest(fits: Callable[[int], bool], most: int) -> int:
    """The largest n in [1, most] with fits(n), by bisection (the need grows with n), else 0. A linear
    search from a size of 4 billion pixels took minutes."""
    low, high = 0, most
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
