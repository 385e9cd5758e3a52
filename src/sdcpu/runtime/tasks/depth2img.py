"""depth2img (diffusers' StableDiffusionDepth2ImgPipeline; Stable Diffusion 2 "depth"): img2img whose
UNet also sees the image's depth map as a fifth input channel, so the edit keeps the scene's shape.

The map is the depth estimator's (runtime/components/depth_estimator.py) or the user's: a `.npy`, a 16-bit
PNG or an array, larger is nearer, as the DPT predicts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npy
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.components.depth_estimator import DepthPreprocess, normalised_depth
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.tasks.base import Conditioning, Start, StartInputs, Task, TaskContext
from sdcpu.runtime.tasks.img2img import sdedit_start

ASPECT_TOLERANCE = 0.02  # a given depth map may differ from the image's proportions by this much


def load_depth_map(source: str | Path | np.ndarray, image: Image.Image) -> np.ndarray:
    """A depth map (1, H, W) float32 from a `.npy` file, a (16-bit) PNG or an array, checked to be 2-D,
    finite and of the image's proportions."""
    if isinstance(source, np.ndarray):
        depth = source
    elif Path(source).suffix.lower() == ".npy":
        depth = _read_npy(Path(source))
    else:
        picture = imaging.decode_image(source, "depth map")
        depth = np.asarray(picture.convert("I") if picture.mode != "F" else picture, dtype=np.float32)
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


def _read_npy(path: Path) -> np.ndarray:
    """A `.npy` depth map, its header's shape checked against the file's size and the pixel limit before
    anything is allocated (a 128-byte file can declare 10^10 values). Pickled arrays are never loaded."""
    imaging.check_regular_file(path, f"the depth map {path}")
    try:
        with path.open("rb") as f:
            version = npy.read_magic(f)
            header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = header(f)
            if dtype.hasobject:
                raise SdcpuError(f"the depth map {path} holds Python objects (a pickle); give an array of numbers")
            count = int(np.prod(shape, dtype=np.float64))
            if count > imaging.MAX_INIT_PIXELS:
                raise SdcpuError(
                    f"the depth map {path} declares {count:,} values, over the {imaging.MAX_INIT_PIXELS:,} limit"
                )
            if count * dtype.itemsize > path.stat().st_size - f.tell():
                raise SdcpuError(f"the depth map {path} is damaged: its header declares more data than it holds")
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise SdcpuError(f"cannot read the depth map {path}: {err}") from None


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
        return DepthPreprocess.from_config(read_json_object(path) if path.exists() else {})
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise SdcpuError(f"cannot read the depth estimator's {path} ({err}); convert the model again") from None
