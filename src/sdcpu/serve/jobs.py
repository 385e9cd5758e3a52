"""The job queue. The pipeline runs one generation at a time (its networks and buffers are shared), so
one worker thread takes jobs from a bounded queue in order; a full queue refuses new jobs (HTTP 429).
Finished jobs are kept, up to a bound, with their PNGs, for the gallery and for clients that poll; the
oldest are dropped first, so memory stays flat however many requests come.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.images import png_bytes
from sdcpu.runtime.settings import GenerationSettings
from sdcpu.runtime.tasks import Task
from sdcpu.serve.limits import ServeLimits

log = logging.getLogger("sdcpu.serve")
FINISHED = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """The queue holds as many jobs as it may."""


class Cancelled(Exception):
    """Raised from the step callback: the denoising loop stops there, nothing is decoded."""


@dataclass
class Job:
    id: str
    mode: str
    settings: GenerationSettings
    task: Task | None = None  # what it runs, with its images; dropped when it has finished
    created: float = field(default_factory=time.time)
    status: str = "queued"  # queued, running, done, failed, cancelled
    step: int = 0
    total: int = 0
    error: str | None = None
    images: list[bytes] = field(default_factory=list)  # PNGs with the settings in their metadata
    infotexts: list[str] = field(default_factory=list)  # A1111's `parameters` text of each image
    preview: bytes | None = None
    version: int = 0  # raised at every change, for the event stream
    cancel: bool = False  # stop at the next step and keep nothing
    interrupt: bool = False  # stop at the next step and decode what there is (A1111's interrupt)
    done: threading.Event = field(default_factory=threading.Event)

    def touch(self, **changes: Any) -> None:
        # The status is set last, so that a reader who sees "done" also sees the images.
        status = changes.pop("status", self.status)
        for key, value in changes.items():
            setattr(self, key, value)
        self.status = status
        self.version += 1
        if self.status in FINISHED:
            self.task = None  # the init image is not needed any more
            self.done.set()

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (settings, progress, image URLs)."""
        return {
            "id": self.id,
            "mode": self.mode,
            "status": self.status,
            "step": self.step,
            "total": self.total,
            "error": self.error,
            "created": self.created,
            "settings": {k: v for k, v in self.settings.__dict__.items() if v is not None}
            | {"loras": [lora.record() for lora in self.settings.loras]}  # by name and hash, not path
            | {"controls": [control.record() for control in self.settings.controls]},  # and without images
            "images": [f"/api/jobs/{self.id}/images/{i}.png" for i in range(len(self.images))],
            "infotexts": self.infotexts,
            "preview": f"/api/jobs/{self.id}/preview.png?v={self.version}" if self.preview else None,
        }


class JobQueue:
    """Runs jobs on `pipeline` one at a time; `preview_every`: a preview image every N steps (0: none)."""

    def __init__(self, pipeline: Any, limits: ServeLimits, preview_every: int = 1):
        self.pipeline, self.limits, self.preview_every = pipeline, limits, preview_every
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._pending: deque[Job] = deque()
        self._lock = threading.Condition()
        self._closed = False
        self.finished: Counter[str] = Counter()  # jobs finished since start, by status
        self._worker = threading.Thread(target=self._work, name="sdcpu-jobs", daemon=True)
        self._worker.start()

    def submit(self, mode: str, settings: GenerationSettings, task: Task | None = None) -> Job:
        """Queue a job; raises QueueFull when `limits.queue` jobs are already waiting or running."""
        with self._lock:
            active = len(self._pending) + (self.current() is not None)
            if self._closed:
                raise QueueFull("the server is shutting down; send the request to it again once it is back")
            if active >= self.limits.queue:
                raise QueueFull(f"the queue is full ({active} jobs); try again when one has finished")
            job = Job(secrets.token_hex(8), mode, settings, task)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Every job kept, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def current(self) -> Job | None:
        with self._lock:  # the routes' threads read while the worker and submit() change the dict
            return next((job for job in self._jobs.values() if job.status == "running"), None)

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0: running or next)."""
        with self._lock:
            return self._pending.index(job) + (self.current() is not None) if job in self._pending else 0

    def cancel(self, job: Job) -> None:
        """A queued job is dropped; a running one stops at its next step."""
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
                job.touch(status="cancelled")
                self.finished["cancelled"] += 1
            elif job.status == "running":
                job.touch(cancel=True)

    def close(self, timeout: float = 60) -> None:
        """Cancel what is queued or running and stop the worker (waiting for it up to `timeout` s)."""
        with self._lock:
            self._closed = True
            for job in [*self._pending, *filter(None, [self.current()])]:
                self.cancel(job)
            self._lock.notify()
        self._worker.join(timeout)

    def _forget_old(self) -> None:
        finished = [job for job in self._jobs.values() if job.status in FINISHED]
        for job in finished[: max(0, len(finished) - self.limits.kept)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._pending.popleft()
                job.touch(status="running", total=job.settings.steps)
            self._run(job)
            with self._lock:
                self.finished[job.status] += 1
                self._forget_old()

    def _run(self, job: Job) -> None:
        try:
            result = self.pipeline.generate(job.settings, job.task, None, lambda *a: self._step(job, *a))
        except Cancelled:
            job.touch(status="cancelled")
            return
        except SdcpuError as err:
            job.touch(status="failed", error=str(err))
            return
        except Exception as err:  # the worker serves every later job: record the failure, log it, go on
            log.exception("job %s failed", job.id)
            job.touch(status="failed", error=f"internal error: {err}")
            return
        metadata = [result.settings.png_metadata(i, result.runtime) for i in range(len(result.images))]
        images = [png_bytes(image, meta) for image, meta in zip(result.images, metadata, strict=True)]
        job.touch(status="done", images=images, infotexts=[m["parameters"] for m in metadata])

    def _step(self, job: Job, done: int, total: int, latents: np.ndarray) -> bool:
        if job.cancel:
            raise Cancelled
        preview = job.preview
        if self.preview_every and (done % self.preview_every == 0 or done == total):
            preview = png_bytes(self.pipeline.preview(latents))
        job.touch(step=done, total=total, preview=preview)
        return not job.interrupt
