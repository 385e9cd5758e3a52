"""The subset of AUTOMATIC1111's `/sdapi/v1` API that scripts, plugins and bots use, over sdcpu's job
queue: request fields, defaults and base64 PNGs as A1111 takes and returns them, and `info` as its
generation-info JSON. Fields sdcpu has no equivalent for are accepted at their defaults and refused,
with a message, when set to something that would change the image.

Decided where A1111 and sdcpu differ: an omitted width or height is the model's native size (A1111's
512 is SD 1.5's); a batch is drawn from one seed (each image is reproduced by the seed and its place in
the batch, as sdcpu's `parameters` record), so `all_seeds` repeats the seed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import warnings
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.infotext import SAMPLERS, sampler_names, scheduler_for
from sdcpu.runtime.io.stored import png_text, stored_settings
from sdcpu.runtime.lora.prompt import lora_names
from sdcpu.serve.a1111_controlnet import controlnet_units
from sdcpu.serve.bodies import CheckedBodyRoute
from sdcpu.serve.jobs import Job
from sdcpu.version import __version__

router = APIRouter(prefix="/sdapi/v1", tags=["A1111"], route_class=CheckedBodyRoute)
# A1111 >= 1.9's `scheduler` field, by label or name ("karras"); Uniform is the plain schedule.
SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras")
# Fields that change the image in A1111 and that sdcpu cannot honour: refused unless at their default.
UNSUPPORTED = {
    "enable_hr": False,
    "restore_faces": (None, False),
    "tiling": (None, False),
    "script_name": (None, ""),
    "subseed_strength": (None, 0, 0.0),
    "mask": None,
    "refiner_checkpoint": (None, ""),
    "styles": (None, []),
    "resize_mode": (None, 0),
}
# override_settings that sdcpu honours, with the values it can take (None: any); others are refused, named.
# (sd_model_checkpoint is checked against the loaded model in _submit.)
OVERRIDES: dict[str, tuple[Any, ...] | None] = {
    "sd_model_checkpoint": None,
    "samples_format": ("png",),
    "save_images": None,
    "CLIP_stop_at_last_layers": (1,),  # clip skip 2 changes the image
    "sd_vae": (None, "Automatic", "None"),  # the model's own VAE
}
POLL_S = 0.05
# sdcpu's setting -> the key of A1111's parsed generation parameters (png-info)
A1111_KEYS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "steps": "Steps",
    "guidance": "CFG scale",
    "seed": "Seed",
    "width": "Size-1",
    "height": "Size-2",
    "num_images": "Batch size",
}


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # A1111 clients send many more fields; see UNSUPPORTED
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = 50
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    override_settings: dict[str, Any] | None = None
    send_images: bool = True
    alwayson_scripts: dict[str, Any] | None = None  # ControlNet's units (a1111_controlnet.py)


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = []
    denoising_strength: float = 0.75
    resize_mode: int = 0


def _scheduler(request: Txt2ImgRequest) -> str:
    # A1111's API: "Automatic" (or no) scheduler is the one A1111 picks for the sampler.
    try:
        return scheduler_for(request.sampler_name or request.sampler_index, request.scheduler, automatic=True)
    except SdcpuError as err:
        raise SdcpuError(f"sampler_name: {err}") from None


def _check_supported(request: Txt2ImgRequest) -> None:
    given = request.model_dump()
    for name, default in UNSUPPORTED.items():
        value = given.get(name, None)
        if value is not None and value not in (default if isinstance(default, tuple) else (default,)):
            what = "inpainting (mask)" if name == "mask" else name
            raise SdcpuError(f"{what} is not supported by sdcpu yet; leave it out or at its default")
    if request.scheduler is not None and request.scheduler.lower() not in [s.lower() for s in SCHEDULE_TYPES]:
        raise SdcpuError(f"unknown scheduler {request.scheduler!r}; this server has: {', '.join(SCHEDULE_TYPES)}")


def check_options(options: dict[str, Any], pipeline: Any) -> None:
    """The one rule for A1111's settings, whether a request's `override_settings` or `POST /options`
    gives them: only OVERRIDES, each at a value sdcpu runs with, and the loaded model's own checkpoint.
    (Accepting in /options what a request refuses would make later requests run silently without it.)"""
    for key, value in options.items():
        if key not in OVERRIDES:
            raise SdcpuError(f"the setting {key!r} is not supported; supported: {', '.join(OVERRIDES)}")
        allowed = OVERRIDES[key]
        if allowed is not None and not any(_same(value, one) for one in allowed):
            raise SdcpuError(f"the setting {key}={value!r} is not supported; sdcpu runs with {allowed[-1]!r}")
    checkpoint = options.get("sd_model_checkpoint")
    if checkpoint is not None and checkpoint not in _model_titles(pipeline):
        raise SdcpuError(f"this server runs {_title(pipeline)} only; got sd_model_checkpoint {checkpoint!r}")


def _same(value: Any, allowed: Any) -> bool:
    return isinstance(value, bool) == isinstance(allowed, bool) and value == allowed  # JSON's true is not 1


def _submit(http: Request, request: Txt2ImgRequest, init_image: str | None = None, strength: float = 0.8) -> Job:
    _check_supported(request)
    server = http.app.state.server
    check_options(request.override_settings or {}, server.pipeline)
    settings = {
        "negative_prompt": request.negative_prompt,
        "steps": request.steps,
        "guidance": request.cfg_scale,
        "seed": None if request.seed < 0 else request.seed,
        "width": request.width,
        "height": request.height,
        "num_images": request.batch_size * request.n_iter,
        "scheduler": _scheduler(request),
        "strength": strength,
        "controls": controlnet_units(request.alwayson_scripts, server.pipeline, server.limits),
    }
    return server.submit(request.prompt, init_image, **settings)


async def _answer(http: Request, request: Txt2ImgRequest, job: Job) -> dict[str, Any]:
    while not job.done.is_set():
        await asyncio.sleep(POLL_S)
    if job.status != "done":
        raise SdcpuError(job.error or f"the generation was {job.status}")
    images = [base64.b64encode(png).decode() for png in job.images] if request.send_images else []
    # As A1111: the request, without its images unless asked (include_init_images).
    parameters = request.model_dump()
    for unit in ((parameters.get("alwayson_scripts") or {}).get("controlnet") or {}).get("args") or []:
        if isinstance(unit, dict):  # as A1111: the request without its images
            unit.pop("image", None)
            unit.pop("input_image", None)
    if not parameters.get("include_init_images"):
        parameters = {k: v for k, v in parameters.items() if k not in ("init_images", "mask")}
    return {"images": images, "parameters": parameters, "info": json.dumps(_info(http, job, request.prompt))}


def _info(http: Request, job: Job, prompt: str) -> dict[str, Any]:
    # `prompt` as the client gave it: A1111 keeps its <lora:...> tags in the info (its all_prompts), and
    # removes them only from the text it encodes.
    s, pipe = job.settings, http.app.state.server.pipeline
    sampler, schedule = SAMPLERS[s.scheduler]
    return {
        "prompt": prompt,
        "all_prompts": [prompt] * s.num_images,
        "negative_prompt": s.negative_prompt,
        "all_negative_prompts": [s.negative_prompt] * s.num_images,
        "seed": s.seed,
        "all_seeds": [s.seed] * s.num_images,
        "subseed": -1,
        "all_subseeds": [-1] * s.num_images,
        "subseed_strength": 0,
        "width": s.width,
        "height": s.height,
        "sampler_name": sampler,
        "cfg_scale": s.guidance,
        "steps": s.steps,
        "batch_size": s.num_images,
        "restore_faces": False,
        "sd_model_name": pipe.model_name,
        "sd_model_hash": pipe.model_hash,
        "denoising_strength": s.strength,
        "extra_generation_params": {"Schedule type": schedule} if schedule else {},
        "index_of_first_image": 0,
        "infotexts": job.infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdcpu {__version__}",
    }


def _title(pipeline: Any) -> str:
    return f"{pipeline.model_name} [{pipeline.model_hash}]"


def _model_titles(pipeline: Any) -> tuple[str, ...]:
    return (_title(pipeline), pipeline.model_name, pipeline.model_hash)


@router.post("/txt2img")
async def txt2img(http: Request, request: Txt2ImgRequest) -> dict[str, Any]:
    """A1111's txt2img: answers when the images are made (429 when the queue is full)."""
    return await _answer(http, request, _submit(http, request))


@router.post("/img2img")
async def img2img(http: Request, request: Img2ImgRequest) -> dict[str, Any]:
    """A1111's img2img with `init_images[0]` and `denoising_strength`; `mask` (inpainting) is refused."""
    if not request.init_images:
        raise SdcpuError("img2img needs init_images: a list with one base64 image")
    return await _answer(http, request, _submit(http, request, request.init_images[0], request.denoising_strength))


@router.get("/progress")
def progress(http: Request, skip_current_image: bool = False) -> dict[str, Any]:
    queue = http.app.state.server.queue
    job = queue.current()
    step, total = (job.step, job.total) if job is not None else (0, 0)
    preview = job.preview if job is not None and not skip_current_image else None
    return {
        "progress": step / total if total else 0.0,
        "eta_relative": 0.0,
        "state": {
            "skipped": False,
            "interrupted": bool(job and job.interrupt),
            "job": job.id if job else "",
            "job_count": len([j for j in queue.jobs() if j.status in ("queued", "running")]),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)) if job else "0",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": total,
        },
        "current_image": base64.b64encode(preview).decode() if preview else None,
        "textinfo": None,
    }


@router.post("/interrupt")
def interrupt(http: Request) -> dict[str, Any]:
    """Stop the running job at its next step; as in A1111, what is there is decoded and returned."""
    job = http.app.state.server.queue.current()
    if job is not None:
        job.touch(interrupt=True)
    return {}


@router.get("/options")
def options(http: Request) -> dict[str, Any]:
    pipe = http.app.state.server.pipeline
    return {"sd_model_checkpoint": _title(pipe), "samples_format": "png", "CLIP_stop_at_last_layers": 1}


@router.post("/options")
def set_options(http: Request, body: dict[str, Any]) -> dict[str, Any]:
    """Only what this server already is: its one model (by title, name or hash), PNG samples and the
    other values `override_settings` takes (`check_options`)."""
    check_options(body, http.app.state.server.pipeline)
    return {}


class PngInfoRequest(BaseModel):
    image: str  # base64, or a data: URL


@router.post("/png-info")
def png_info(http: Request, request: PngInfoRequest) -> dict[str, Any]:
    """A1111's PNG info: the `parameters` text as `info`, the other text chunks as `items`, and the
    settings as `parameters` (A1111's keys), read and type-checked as `generate --from-png` reads them."""
    text = http.app.state.server.limits.read(png_text, request.image, "image")
    settings: dict[str, Any] = {}
    if "sdcpu" in text or "parameters" in text:
        with warnings.catch_warnings():  # --from-png's notes (given noise, ControlNets) are for the CLI
            warnings.simplefilter("ignore")
            settings = stored_settings(text, "the image")
    parameters = {A1111_KEYS[key]: value for key, value in settings.items() if key in A1111_KEYS}
    sampler, schedule = SAMPLERS.get(settings.get("scheduler", ""), (None, None))
    parameters |= {"Sampler": sampler, "Schedule type": schedule} if sampler else {}
    items = {key: value for key, value in text.items() if key != "parameters"}
    return {"info": text.get("parameters", ""), "items": items, "parameters": parameters}


@router.get("/sd-models")
def sd_models(http: Request) -> list[dict[str, Any]]:
    pipe = http.app.state.server.pipeline
    name = pipe.model_name
    return [
        {
            "title": _title(pipe),
            "model_name": name,
            "hash": pipe.model_hash,
            "sha256": None,
            "filename": name,
            "config": None,
        }
    ]


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": [], "options": {}} for name in sampler_names()]


@router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    """No A1111 scripts or extensions (clients ask, to find ControlNet or ADetailer)."""
    return {"txt2img": [], "img2img": []}


@router.get("/loras")
def loras(http: Request) -> list[dict[str, Any]]:
    """The LoRAs in the server's --lora-dir, which prompts name as `<lora:NAME:WEIGHT>` (A1111's shape;
    the path is the file's name, not where this machine keeps it)."""
    names = lora_names(http.app.state.server.pipeline.lora_dir)
    return [{"name": name, "alias": name, "path": f"{name}.safetensors", "metadata": {}} for name in names]


@router.post("/refresh-loras")
def refresh_loras() -> dict[str, Any]:
    """The folder is read at every request and every prompt: nothing to refresh."""
    return {}


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return [{"name": label.lower(), "label": label, "aliases": None} for label in SCHEDULE_TYPES]
