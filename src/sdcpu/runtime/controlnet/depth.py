"""The depth annotator (A1111's `depth_midas`, also named `depth`): a photo to the depth map that depth
ControlNets were trained on (ControlNet v1.1's depth model: MiDaS, https://arxiv.org/abs/1907.01341, here
its DPT-Hybrid network, https://arxiv.org/abs/2103.13413). Torch-free: the network is a converted one.

The estimator is an annotator folder (`sdcpu convert Intel/dpt-hybrid-midas DIR`, format/annotator.py) or
a converted SD 2 depth model, whose own estimator is the same network. Its prediction, relative inverse
depth (larger is nearer), is resized to the photo's size (bicubic, as depth2img's) and scaled as A1111's
module scales it: minus its minimum, over its maximum, times 255, truncated to 8 bits, grey RGB.

The network sees the photo at its own size (its image processor's: 384x384 for DPT-Hybrid, the aspect not
kept), as transformers' DPT image processor and diffusers' depth2img give it; A1111's module gives MiDaS
the photo at 512 on its short side instead, so maps differ in detail, not in what is near.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdcpu.cache import VERIFIED_FILES
from sdcpu.errors import SdcpuError
from sdcpu.format.annotator import ANNOTATOR_MANIFEST, AnnotatorManifest
from sdcpu.format.manifest import MANIFEST_NAME, Manifest
from sdcpu.runtime.components.depth_estimator import DepthPreprocess, resize_bicubic
from sdcpu.runtime.controlnet.annotators import ESTIMATORS
from sdcpu.runtime.engines import GraphInterface, Model, load_model
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.tasks.depth2img import depth_preprocess

COMPONENT = "depth_estimator"


def depth_image(depth: np.ndarray, width: int, height: int) -> Image.Image:
    """A (1, h, w) prediction as A1111's depth map of a `width` x `height` photo: 8-bit grey RGB."""
    resized = resize_bicubic(depth.reshape(1, *depth.shape[-2:]), height, width)[0]
    shifted = resized - resized.min()
    top = shifted.max()
    scaled = shifted / top if top > 0 else shifted  # a flat prediction is a black map, as A1111's
    grey = np.clip(scaled * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


class DepthAnnotator:
    """`annotator(image)`: the depth map of `image`. The folder is checked (and its files verified) when
    this is made; its network is read on first use, with `options` resolved (a pipeline's)."""

    def __init__(self, folder: Path, options: LoadOptions):
        self.folder = Path(folder)
        self.options = options
        self.graph, self.preprocess = _open(self.folder, options)
        self._model: Model | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        if self._model is None:
            # dynamic, as depth2img's: a static reshape of the DPT-Hybrid graph does not compile
            self._model = load_model(self.graph, self.options, interface=GraphInterface(dynamic=True))
        depth = self._model(pixel_values=self.preprocess(image.convert("RGB")))
        return depth_image(depth, *image.size)


def _open(folder: Path, options: LoadOptions) -> tuple[Path, DepthPreprocess]:
    # An annotator folder, or a converted model folder that has a depth estimator (SD 2 depth's).
    cache = options.cache_folder()
    record = cache / VERIFIED_FILES if cache is not None else None
    if (folder / ANNOTATOR_MANIFEST).is_file():
        annotator = AnnotatorManifest.load(folder)
        fmt, graph = annotator.format, annotator.graph_path(folder)
        annotator.verify(folder, options.verify, record)
    else:
        model = Manifest.load(folder) if (folder / MANIFEST_NAME).is_file() else None
        if model is None or COMPONENT not in model.components:
            raise SdcpuError(f"{folder} holds no converted depth estimator; give {ESTIMATORS}")
        fmt, graph = model.format, model.graph_path(folder, COMPONENT)
        model.verify(folder, options.verify, record)
    if options.backend == "onnxruntime" and fmt != "onnx":
        raise SdcpuError(
            f"the depth estimator {folder.name} is an {fmt} folder; ONNX Runtime runs ONNX ones: convert it with "
            "--format onnx, or run with --backend openvino"
        )
    return graph, depth_preprocess(folder)
