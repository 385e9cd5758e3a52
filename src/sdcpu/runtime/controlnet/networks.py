"""The ControlNets a pipeline has opened, and what a generation's ControlNets add to its loop: the UNet's
residual inputs (residuals.py) and the hook that computes them at every call (hook.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sdcpu.cache import VERIFIED_FILES
from sdcpu.errors import SdcpuError
from sdcpu.format.controlnet import ControlNetManifest
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.controlnet import NEEDS_CONVERT, RESIDUAL_GRAPH, residuals
from sdcpu.runtime.controlnet.annotators import Annotators
from sdcpu.runtime.controlnet.depth import DepthAnnotator
from sdcpu.runtime.controlnet.hook import ControlNetHook, ControlUnit, control_image
from sdcpu.runtime.engines import GraphInterface, Model, load_model
from sdcpu.runtime.engines.passes import GraphPass
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.settings import GenerationSettings


def residual_inputs(channels: list[int], half: bool = False) -> GraphPass:
    """The graph pass adding residual inputs of these widths (the middle block's last) to the UNet; float16
    ones where `half` (see residuals.add_residual_inputs)."""

    def apply(model: object) -> int:
        return residuals.add_residual_inputs(model, channels, half)

    name = "controlnet-residuals-" + "-".join(str(c) for c in channels) + ("-f16" if half else "")
    return GraphPass(name, residuals.REVISION, apply, frozenset({"unet"}), devices=None, onnx_graph=RESIDUAL_GRAPH)


def _text_width(folder: Path, model: Manifest) -> int:
    # The width of the text the UNet reads: its config's (graphs often leave it dynamic), else its graph's.
    try:
        return int(read_json_object(folder / "unet" / "config.json")["cross_attention_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return model.input_shape("unet", "encoder_hidden_states")[-1]


def _check_onnx(folder: Path, manifest: ControlNetManifest, model: Manifest) -> None:
    # ONNX Runtime runs ONNX ControlNets, with a UNet graph that has their inputs (written at convert).
    if manifest.format != "onnx":
        raise SdcpuError(
            f"ControlNet {folder.name} is an {manifest.format} folder; ONNX Runtime runs ONNX ones: convert it "
            "with --format onnx, or run with --backend openvino"
        )
    if f"unet/{RESIDUAL_GRAPH}" not in model.files:
        raise SdcpuError(NEEDS_CONVERT)


class ControlNets:
    """`load(path)`: a ControlNet folder's network, opened once; `hook(settings, unet)` for a generation;
    `annotators`: the modules that make control images."""

    def __init__(self, options: LoadOptions, folder: Path, model: Manifest, free: Callable[[Model], None]):
        self.options, self.model, self.free = options, model, free
        self._opened: dict[str, tuple[ControlNetManifest, Model]] = {}
        self._checked: dict[str, ControlNetManifest] = {}  # verified once per folder, not at every generation
        self._levels: list[tuple[int, int]] | None = None  # the residual inputs the UNet was given, once given
        self.text_width = _text_width(folder, model)
        # Residuals handed over as float16 where the networks compute in bf16 or f16 (OpenVINO on the CPU
        # by default where it has bf16), which round them as much: half the bytes (residuals.add_residual_inputs).
        self.half = options.backend == "openvino" and options.compute_precision in ("bf16", "f16")
        # The annotators generations may name: depth with the depth estimator given (checked here, once).
        given = options.depth_estimator
        self.annotators = Annotators(DepthAnnotator(Path(given), options) if given is not None else None)

    @property
    def dtype(self) -> type[np.floating]:
        """The residuals' dtype: float16 where they are handed over in half precision."""
        return np.float16 if self.half else np.float32

    def check(self, folder: str) -> ControlNetManifest:
        """The manifest of a ControlNet this model can take, its files verified; SdcpuError otherwise."""
        if folder in self._checked:
            return self._checked[folder]
        manifest = ControlNetManifest.load(Path(folder))
        if self.options.backend == "onnxruntime":
            _check_onnx(Path(folder), manifest, self.model)
        text = self.text_width
        if text not in (-1, manifest.cross_attention_dim):
            raise SdcpuError(
                f"ControlNet {Path(folder).name} is for {manifest.family} models ({manifest.cross_attention_dim}-wide "
                f"text); this model's UNet reads {text}-wide text: choose a ControlNet of its family"
            )
        cache = self.options.cache_folder()
        manifest.verify(Path(folder), self.options.verify, cache / VERIFIED_FILES if cache is not None else None)
        self._checked[folder] = manifest
        return manifest

    def _open(self, folder: str) -> tuple[ControlNetManifest, Model]:
        if folder not in self._opened:
            manifest = self.check(folder)
            interface = GraphInterface(half_outputs=self.half)
            self._opened[folder] = (
                manifest,
                load_model(manifest.graph_path(Path(folder)), self.options, lazy=True, interface=interface),
            )
        return self._opened[folder]

    def hook(self, s: GenerationSettings, unet: Model) -> ControlNetHook | None:
        """The hook computing `s`'s ControlNets' residuals, with `unet` given their inputs. None for none, unless
        the UNet has those inputs already: it is then fed zeros (exact: x + 0 is x), not compiled again."""
        if not s.controls:
            return ControlNetHook([], self._levels, self.dtype) if self._levels is not None else None
        units = []
        for setting in s.controls:
            manifest, model = self._open(setting.folder)
            units.append(ControlUnit(model, manifest, setting, control_image(setting.image, s.width, s.height)))
        channels = {tuple(unit.manifest.residual_channels) for unit in units}
        if len(channels) > 1:
            raise SdcpuError("these ControlNets give residuals of different widths: they are for different families")
        manifest = units[0].manifest
        unet.extend(residual_inputs(manifest.residual_channels, self.half))
        self._levels = list(zip(manifest.residual_channels, manifest.residual_levels, strict=True))
        return ControlNetHook(units, self._levels, self.dtype)

    def release(self) -> None:
        """After the loop: free the ControlNets as the memory policy says."""
        for _, model in self._opened.values():
            self.free(model)
