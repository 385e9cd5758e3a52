"""What the SDXL tests share: loading a converted tiny SDXL at f32, its networks alone, diffusers' SDXL
pipelines with a scheduler of sdcpu's name, and the init image."""

from __future__ import annotations

import numpy as np
import tiny

from sdcpu import Pipeline
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.components.unet import unet_interfaces
from sdcpu.runtime.engines import load_model
from sdcpu.runtime.options import LoadOptions

COMPONENT_TOLERANCE = 1e-4
PIXEL_TOLERANCE = 2 / 255
BACKENDS = ["openvino", "onnxruntime"]


def folder(backend, sdxl_openvino, sdxl_onnx):
    return sdxl_openvino if backend == "openvino" else sdxl_onnx


def load(folder, backend="openvino") -> Pipeline:
    return Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32", cache=False))


def runtime(folder, component):
    manifest = Manifest.load(folder)
    options = LoadOptions(compute_precision="f32", cache=False).resolve(manifest)
    interface = unet_interfaces(manifest).get(component)
    return load_model(manifest.graph_path(folder, component), options, interface=interface)


def diffusers_pipeline(folder, kind: str = "StableDiffusionXLPipeline", scheduler: str = "euler", **overrides):
    import diffusers

    pipe = getattr(diffusers, kind).from_pretrained(folder)
    class_name, defaults = tiny.DIFFUSERS_SCHEDULERS[scheduler]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **defaults, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


def image(seed: int = 5):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))
