"""What a generation mode adds to the shared denoising loop, as one small object the loop is given.

txt2img and img2img add nothing (`Conditioning` itself). Inpainting adds the mask and the masked image
as UNet input channels, or blends the known latents back after each step (runtime/inpaint.py); the x4
upscaler adds the noised low-res image and its noise level (runtime/upscale.py); depth2img adds the
depth map (runtime/depth.py). Each hook is called at one numbered step of `Pipeline.generate`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Conditioning:
    """The loop's hooks; this base changes nothing (txt2img, img2img)."""

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        """Step 4: the scaled latents (N, C, h, w), with any extra input channels the UNet takes appended."""
        return sample

    def unet_inputs(self) -> dict[str, np.ndarray]:
        """Step 4: extra named UNet inputs, one row per image (the runner repeats them for guidance)."""
        return {}

    def predict(self, unet: Callable[[np.ndarray], np.ndarray], sample: np.ndarray) -> np.ndarray:
        """Step 4: the guided prediction for the UNet input `sample` (whole, or tile by tile)."""
        return unet(sample)

    def after_step(self, latents: np.ndarray, index: int) -> np.ndarray:
        """Step 4: the latents after the `index`-th scheduler step (from 0) of this run."""
        return latents

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """Step 5: the decoded images (N, H, W, 3) in [0, 1]."""
        return pixels


PLAIN = Conditioning()
