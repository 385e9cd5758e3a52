"""The ASGI app: the page, the native JSON API (jobs, their events, images) and the A1111 subset
(a1111.py), over one loaded pipeline. `create_app` is what `sdcpu serve` runs with uvicorn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from sdcpu.errors import SdcpuError
from sdcpu.runtime.controlnet.folders import controlnet_names, find_controlnet
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.lora.prompt import lora_names
from sdcpu.runtime.schedulers import SCHEDULERS
from sdcpu.runtime.tasks import ImageToImage, TextToImage
from sdcpu.serve.a1111_controlnet import MAX_UNITS
from sdcpu.serve.bodies import CheckedBodyRoute, install_validation_errors, plain
from sdcpu.serve.jobs import FINISHED, Job, JobQueue, QueueFull
from sdcpu.serve.limits import LimitError, ServeLimits
from sdcpu.serve.security import guard

STATIC = resources.files("sdcpu.serve") / "static"
EVENT_POLL_S = 0.1
router = APIRouter(
    prefix="/api", tags=["sdcpu"], route_class=CheckedBodyRoute
)  # the native API; the A1111 subset is in a1111.py


class ControlRequest(BaseModel):
    """A ControlNet for a job: its name in the server's ControlNet folder and its control image (base64)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    image: str
    module: str = "none"
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"


class JobRequest(BaseModel):
    """A generation: txt2img, or img2img with `init_image` (base64)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    negative_prompt: str = ""
    steps: int | None = None  # None: the model's (20; few-step models fewer)
    guidance: float | None = None  # None: the model's (7.5; few-step models off)
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = Field(1, ge=1)
    scheduler: str | None = None
    init_image: str | None = None
    strength: float = 0.8
    deep_cache: int = Field(1, ge=1)
    controls: list[ControlRequest] = Field(default_factory=list, max_length=MAX_UNITS)


class Server:
    """What the routes share: the pipeline, its job queue and the limits."""

    def __init__(self, pipeline: Any, limits: ServeLimits, preview_every: int = 1):
        self.pipeline, self.limits = pipeline, limits
        self.queue = JobQueue(pipeline, limits, preview_every)

    def submit(self, prompt: str, init_image: str | None = None, **settings: Any) -> Job:
        """Check a request against the limits (before the init image, base64, is decoded), then against
        the pipeline and again against the limits (an img2img size comes from its image), then queue it.
        Raises LimitError, SdcpuError or QueueFull."""
        s, texts = settings, (prompt, settings.get("negative_prompt") or "")
        self.limits.check(s.get("width") or 0, s.get("height") or 0, s.get("steps") or 0, s["num_images"], *texts)
        image = self.limits.decode_image(init_image, "init image") if init_image is not None else None
        strength = settings.pop("strength", 0.8)
        task = ImageToImage(image, strength) if image is not None else TextToImage()
        checked = self.pipeline.settings(prompt, task, **settings)
        self.limits.check(checked.width, checked.height, checked.steps, checked.num_images)
        return self.queue.submit("img2img" if image is not None else "txt2img", checked, task)

    def control(self, unit: ControlRequest) -> ControlSetting:
        """A ControlNet of a request, found by name in the ControlNet folder, its image decoded and checked."""
        folder = find_controlnet(unit.model, self.pipeline.controlnet_dir, paths=False)
        image = self.limits.decode_image(unit.image, "control image")
        annotators = self.pipeline.controlnets.annotators
        return ControlSetting.of(
            folder, image, unit.weight, unit.start, unit.end, unit.mode, unit.module, annotators=annotators
        )

    def job(self, job_id: str) -> Job:
        job = self.queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id} (finished jobs are kept up to {self.limits.kept})")
        return job


def create_app(
    pipeline: Any, limits: ServeLimits | None = None, api_key: str | None = None, preview_every: int = 1
) -> FastAPI:
    """The app for a loaded Pipeline. OpenAPI's schema is at /openapi.json; its browsable pages are off,
    as they load scripts from a CDN and the server works offline."""
    from sdcpu.serve import a1111, a1111_controlnet

    limits = limits or ServeLimits()
    server = Server(pipeline, limits, preview_every)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.queue.close()  # on shutdown: cancel what is queued or running, stop the worker

    app = FastAPI(title="sdcpu", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.server = server
    app.middleware("http")(guard(api_key, limits.max_upload_bytes))
    _errors(app)
    install_validation_errors(app)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(router)
    app.include_router(a1111.router)
    app.include_router(a1111_controlnet.router)

    html = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return html

    return app


def _server(http: Request) -> Server:
    return http.app.state.server  # type: ignore[no-any-return]


@router.get("/model")
def model(http: Request) -> dict[str, Any]:
    """The loaded model, its defaults, the schedulers, the modes and this server's limits."""
    server = _server(http)
    pipeline, m = server.pipeline, server.pipeline.manifest
    return {
        "name": pipeline.model_name,
        "hash": pipeline.model_hash,
        "source": m.source,
        "format": m.format,
        "precision": m.precision,
        "size": m.sample_size,
        "multiple": m.vae_scale_factor,
        "schedulers": list(SCHEDULERS),
        "modes": ["txt2img", "img2img"],
        "limits": asdict(server.limits),
        "loras": lora_names(pipeline.lora_dir),  # what prompts may name as <lora:NAME:WEIGHT>
        "controlnets": controlnet_names(pipeline.controlnet_dir),
        "control_modules": pipeline.controlnets.annotators.names(),
    }


@router.post("/jobs", status_code=202)
def create_job(http: Request, request: JobRequest) -> dict[str, Any]:
    """Queue a generation; 429 when the queue is full. Follow it at /api/jobs/{id}/events."""
    server = _server(http)
    fields = request.model_dump(exclude={"prompt", "init_image", "controls"})
    fields["controls"] = [server.control(unit) for unit in request.controls]
    job = server.submit(request.prompt, request.init_image, **fields)
    return job.public() | {"position": server.queue.position(job)}


@router.get("/jobs")
def list_jobs(http: Request) -> list[dict[str, Any]]:
    """The jobs kept on this server, newest first (the gallery)."""
    return [job.public() for job in _server(http).queue.jobs()]


@router.get("/jobs/{job_id}")
def get_job(http: Request, job_id: str) -> dict[str, Any]:
    server = _server(http)
    job = server.job(job_id)
    return job.public() | {"position": server.queue.position(job)}


@router.post("/jobs/{job_id}/cancel")
def cancel_job(http: Request, job_id: str) -> dict[str, Any]:
    """Drop a queued job, or stop a running one at its next step (nothing is decoded)."""
    server = _server(http)
    job = server.job(job_id)
    server.queue.cancel(job)
    return job.public()


@router.get("/jobs/{job_id}/events")
def job_events(http: Request, job_id: str) -> StreamingResponse:
    """Server-sent events: `progress` (the job, with its preview URL) at every change, then `end`."""
    return StreamingResponse(_events(_server(http).job(job_id)), media_type="text/event-stream")


@router.get("/jobs/{job_id}/images/{index}.png")
def job_image(http: Request, job_id: str, index: int) -> Response:
    images = _server(http).job(job_id).images
    if not 0 <= index < len(images):
        raise HTTPException(404, f"job {job_id} has no image {index}")
    return Response(images[index], media_type="image/png")


@router.get("/jobs/{job_id}/preview.png")
def job_preview(http: Request, job_id: str) -> Response:
    preview = _server(http).job(job_id).preview
    if preview is None:
        raise HTTPException(404, f"job {job_id} has no preview yet")
    return Response(preview, media_type="image/png", headers={"Cache-Control": "no-store"})


async def _events(job: Job) -> AsyncIterator[str]:
    seen = -1
    while True:
        finished = job.status in FINISHED  # read first: a finished job has its images (Job.touch)
        if job.version != seen or finished:
            seen = job.version
            yield f"event: progress\ndata: {json.dumps(job.public())}\n\n"
        if finished:
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(EVENT_POLL_S)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(LimitError)
    async def over_limit(request: Request, err: LimitError) -> JSONResponse:
        return JSONResponse({"detail": plain(str(err))}, status_code=err.status)

    @app.exception_handler(SdcpuError)
    async def bad_request(request: Request, err: SdcpuError) -> JSONResponse:
        return JSONResponse({"detail": plain(str(err))}, status_code=422)

    @app.exception_handler(OSError)
    async def file_error(request: Request, err: OSError) -> JSONResponse:
        # The last line: a file the server could not read or write, which no check foresaw, is the
        # server's condition (503), said in one line; never a 500 with a traceback in the log.
        where = f" {err.filename}" if err.filename else ""
        detail = plain(f"the server could not use{where}: {err.strerror or err}")
        return JSONResponse({"detail": detail}, status_code=503)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=429, headers={"Retry-After": "5"})
