"""depth2img (diffusers' StableDiffusionDepth2ImgPipeline; Stable Diffusion 2 "depth"): img2img whose
UNet also sees the image's depth map as a fifth input channel, so the edit keeps the scene's shape.

The map is the depth estimator's (runtime/components/depth_estimator.py) or the user's: a `.npy`, a 16-bit
PNG or an array, larger is nearer, as the DPT predicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.components.depth_estimator import DepthPreprocess, normalised_depth
from sdcpu.runtime.tasks.base import Conditioning, Start, StartInputs, Task, TaskContext
from sdcpu.runtime.tasks.img2img import sdedit_start

ASPECT_TOLERANCE = 0.02  # a given depth map may differ from the image's proportions by this much


def load_depth_map(source: str | Path | np.ndarray, image: Image.Image) -> np.ndarray:
    """A depth map (1, H, W) float32 from a `.npy` file, a (16-bit) PNG or an array, checked to be 2-D,
    finite and of the image's proportions."""
    if isinstance(source, np.ndarray):
        depth = source
    elif Path(source).suffix.lower() == ".npy":
        try:
            depth = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise SdcpuError(f"cannot read the depth map {source}: {err}") from None
    else:
        try:
            with Image.open(source) as picture:
                depth = np.asarray(picture.convert("I") if picture.mode != "F" else picture, dtype=np.float32)
        except (OSError, ValueError) as err:
            raise SdcpuError(f"cannot read the depth map {source}: {err}") from None
    shape = np.shape(depth)
    depth = np.squeeze(np.asarray(depth, dtype=np.float32))
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise SdcpuError(f"the depth map must be one 2-D map (H x W); got shape {tuple(shape)}")
    if not np.isfinite(depth).all():
        raise SdcpuError("the depth map holds NaN or Inf; give finite depths")
    ratio, expected = depth.shape[1] / depth.shape[0], image.width / image.height
    if abs(ratio / expected - 1) > ASPECT_TOLERANCE:
        raise SdcpuError(
            f"the depth map is {depth.shape[1]}x{depth.shape[0]} and the image {image.width}x{image.height}; "
            "give a depth map of the image's proportions"
        )
    return depth[None]


class DepthChannel(Conditioning):
    """[scaled z_t, depth] along channels."""

    def __init__(self, depth: np.ndarray):
        self.depth = depth

    def unet_input(self, sample: np.ndarray) -> np.ndarray:
        return np.concatenate([sample, self.depth], axis=1)


@dataclass(frozen=True)
class DepthToImage(Task):
    """Redraw `init_image`, keeping its depth: `depth_map` (1, H, W) from `load_depth_map`, or None for
    the model's depth estimator's; `strength` as img2img's."""

    init_image: Image.Image
    strength: float = 0.8
    depth_map: np.ndarray | None = None

    name = "depth-to-image"
    runs_on = ("depth-to-image",)
    command = "`sdcpu depth2img` (Pipeline.depth2img)"

    @classmethod
    def read_folder(cls, folder: Path) -> DepthPreprocess:
        return depth_preprocess(folder)

    def image(self) -> Image.Image:
        return self.init_image

    def record(self, manifest: Manifest) -> dict[str, Any]:
        return {"strength": self.strength, "depth": "given" if self.depth_map is not None else "estimated"}

    def components(self) -> tuple[str, ...]:
        return ("vae_encoder",) if self.depth_map is not None else ("vae_encoder", "depth_estimator")

    def start(self, pipe: TaskContext, given: StartInputs) -> Start:
        s = given.settings
        start = sdedit_start(pipe, given, self.init_image)  # as img2img, then the depth channel
        depth = self.depth_map if self.depth_map is not None else estimate_depth(pipe, self.init_image)
        f = pipe.manifest.vae_scale_factor
        depth = np.repeat(normalised_depth(depth, s.height // f, s.width // f), s.num_images, axis=0)
        return replace(start, conditioning=DepthChannel(depth))


def estimate_depth(pipe: TaskContext, image: Image.Image) -> np.ndarray:
    """The depth estimator's prediction for `image`, (1, h, w), with its image processor's settings."""
    estimator = pipe.component("depth_estimator")
    preprocess = pipe.task_files
    assert isinstance(preprocess, DepthPreprocess)  # read at load: depth2img runs on depth models only
    depth = estimator(pixel_values=preprocess(image))
    pipe.free(estimator)
    return depth


def depth_preprocess(folder: Path) -> DepthPreprocess:
    """The depth estimator's image processor, as its folder's feature_extractor/ configures it."""
    path = folder / "feature_extractor" / "preprocessor_config.json"
    try:
        return DepthPreprocess.from_config(json.loads(path.read_text()) if path.exists() else {})
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise SdcpuError(f"cannot read the depth estimator's {path} ({err}); convert the model again") from None
