"""The API of A1111's ControlNet extension (sd-webui-controlnet), as its clients use it:

- units in a txt2img or img2img request, `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, each
  with `image` (base64, or `{"image": ...}`), `module`, `model` ("NAME [HASH]" or NAME, in --controlnet-dir),
  `weight`, `guidance_start`, `guidance_end`, `control_mode` (0, 1, 2 or their labels), `pixel_perfect`,
  `threshold_a` and `threshold_b` (canny's thresholds), `enabled`; a unit with model "None" is off;
- `/controlnet/model_list`, `/controlnet/module_list`, `/controlnet/detect` (the annotators sdcpu ships),
  `/controlnet/version` and `/controlnet/settings`.

Decided where they differ: the annotator runs at the image's own size and its output is resized to the
image asked for, which is what `pixel_perfect` asks for, so `processor_res` is not used; every resize
mode is taken, as a control image of another aspect is refused (crop it first).
"""

from __future__ import annotations

import base64
import io
import threading
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdcpu.errors import SdcpuError
from sdcpu.runtime.controlnet.folders import controlnet_names, controlnet_title, find_controlnet
from sdcpu.runtime.controlnet.setting import CONTROL_MODES, ControlSetting
from sdcpu.runtime.io.infotext import CONTROL_MODES as CONTROL_MODE_LABELS
from sdcpu.serve.bodies import CheckedBodyRoute

router = APIRouter(prefix="/controlnet", tags=["A1111 ControlNet"], route_class=CheckedBodyRoute)
MAX_UNITS = 3  # A1111's default unit count
# control_mode as A1111's clients send it: an index or a label
MODES: dict[int | str, str] = {0: "balanced", 1: "prompt", 2: "control"}
MODES |= {label.lower(): mode for mode, label in CONTROL_MODE_LABELS.items()}
OFF = (None, "", "None", "none")
DETECTING = threading.Lock()


def _image(unit: dict[str, Any]) -> str:
    given = unit.get("image", unit.get("input_image"))
    if isinstance(given, dict):
        given = given.get("image")
    if not isinstance(given, str) or not given:
        raise SdcpuError("a ControlNet unit needs `image`: a base64 PNG, JPEG or WebP")
    return given


def _mode(unit: dict[str, Any]) -> str:
    given = unit.get("control_mode", 0)
    mode = MODES.get(given.lower() if isinstance(given, str) else given) if _is(given, int, str) else None
    if unit.get("guessmode") is True:  # the extension's older API
        mode = "control"
    if mode is None:
        raise SdcpuError(f"unknown control_mode {given!r}; use 0, 1 or 2 ({', '.join(CONTROL_MODES)})")
    return mode


def _is(value: Any, *kinds: type) -> bool:
    """isinstance, where a JSON true or false is not a number."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _thresholds(unit: dict[str, Any]) -> tuple[float, float] | None:
    low, high = unit.get("threshold_a", -1), unit.get("threshold_b", -1)
    if low in (None, -1) and high in (None, -1):
        return None
    if not all(_is(v, int, float) for v in (low, high)) or not 0 <= low <= high <= 255 * 8:
        raise SdcpuError(f"canny's threshold_a and threshold_b must satisfy 0 <= a <= b; got {low}, {high}")
    return float(low), float(high)


def controlnet_units(scripts: dict[str, Any] | None, pipeline: Any, limits: Any) -> list[ControlSetting]:
    """The ControlNet units of a request's `alwayson_scripts`, checked; SdcpuError for others scripts."""
    scripts = scripts or {}
    others = [name for name in scripts if name.lower() != "controlnet"]
    if others:
        raise SdcpuError(f"alwayson_scripts {', '.join(others)} are not supported; this server has: controlnet")
    script = next(iter(scripts.values()), None) or {}
    units = script.get("args", []) if isinstance(script, dict) else None
    if not isinstance(units, list) or len(units) > MAX_UNITS:
        raise SdcpuError(f"alwayson_scripts.controlnet.args must be a list of at most {MAX_UNITS} units")
    controls = []
    for unit in units:
        if not isinstance(unit, dict):
            raise SdcpuError("each ControlNet unit must be an object")
        if unit.get("enabled", True) is False or unit.get("model") in OFF:
            continue
        if not _is(unit["model"], str) or not _is(unit.get("module", "none"), str, type(None)):
            raise SdcpuError("a ControlNet unit's model and module must be names (text)")
        folder = find_controlnet(unit["model"], pipeline.controlnet_dir, paths=False)
        image = limits.decode_image(_image(unit), "control image")
        weight, start, end = unit.get("weight", 1.0), unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
        if not all(_is(v, int, float) for v in (weight, start, end)):
            raise SdcpuError("a ControlNet unit's weight, guidance_start and guidance_end must be numbers")
        module = str(unit.get("module") or "none")
        controls.append(
            ControlSetting.of(
                folder,
                image,
                weight,
                start,
                end,
                _mode(unit),
                module,
                _thresholds(unit),
                pipeline.controlnets.annotators,
            )
        )
    return controls


@router.get("/version")
def version() -> dict[str, Any]:
    return {"version": 2}


@router.get("/settings")
def settings() -> dict[str, Any]:
    return {"control_net_unit_count": MAX_UNITS}


@router.get("/model_list")
def model_list(http: Request) -> dict[str, Any]:
    """The ControlNets in the server's --controlnet-dir, by A1111's title "NAME [HASH]"."""
    folder = http.app.state.server.pipeline.controlnet_dir
    return {"model_list": [controlnet_title(folder / name) for name in controlnet_names(folder)]}


@router.get("/module_list")
def module_list(http: Request) -> dict[str, Any]:
    """The annotators this server runs: none and canny, and depth where it was given a depth estimator."""
    return {"module_list": http.app.state.server.pipeline.controlnets.annotators.names()}


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=MAX_UNITS)  # CPU per image
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


@router.post("/detect")
def detect(http: Request, request: DetectRequest) -> dict[str, Any]:
    """Run an annotator on each image; base64 PNGs back."""
    limits, annotate = http.app.state.server.limits, http.app.state.server.pipeline.controlnets.annotators
    unit = {"threshold_a": request.controlnet_threshold_a, "threshold_b": request.controlnet_threshold_b}
    thresholds = _thresholds(unit)
    images = []
    with DETECTING:  # one detection at a time: it runs beside the queue, and each image costs seconds of CPU
        for data in request.controlnet_input_images:
            annotated = annotate(request.controlnet_module, limits.decode_image(data, "input image"), thresholds)
            buffer = io.BytesIO()
            annotated.save(buffer, format="PNG")
            images.append(base64.b64encode(buffer.getvalue()).decode())
    return {"images": images, "info": "Success"}
