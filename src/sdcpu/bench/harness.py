"""`sdcpu bench`: where the time and memory of a generation go, for one model folder or two side by side.

Each model runs in its own worker process, so that its peak RSS is its own and one model's caches do
not help the other; with two models the runs alternate (A B A B ...), because on a shared or
thermally throttled machine only same-run ratios mean anything. Each component is timed by wrapping
the pipeline's model objects; the denoising loop itself is the pipeline's, unchanged.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.bench.machine import machine, peak_rss_gb
from sdcpu.bench.peers import PROMPT
from sdcpu.bench.timing import Timed
from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.options import LoadOptions


@dataclass(frozen=True)
class BenchSettings:
    steps: int = 20
    runs: int = 3
    width: int | None = None
    height: int | None = None
    guidance: float = 7.5
    deep_cache: int = 1  # as Pipeline's deep_cache: the whole UNet every N steps
    load: LoadOptions = LoadOptions()  # how every model is loaded

    def record(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "load"}, "load": self.load.record()}


def _worker(folder: str | None, settings: BenchSettings, conn: Any) -> None:
    try:
        _serve(folder, settings, conn)
    except SdcpuError as err:  # the parent raises it again: bad input reads the same as in `generate`
        conn.send({"error": str(err)})


def _serve(folder: str | None, settings: BenchSettings, conn: Any) -> None:
    from sdcpu.runtime.pipelines.base import Pipeline

    start = time.perf_counter()
    pipe = Pipeline.load(folder, settings.load)
    load_s = time.perf_counter() - start
    names = ("text_encoder", "unet", "unet_shallow", "vae_decoder")
    timed = {name: Timed(model) for name in names if (model := getattr(pipe, name)) is not None}
    for name, model in timed.items():
        setattr(pipe, name, model)
    conn.send({"load_s": load_s, "source": pipe.manifest.source, "precision": pipe.manifest.precision})
    while conn.recv():
        conn.send(_run(pipe, timed, settings))


def _run(pipe: Any, timed: dict[str, Timed], settings: BenchSettings) -> dict[str, Any]:
    for model in timed.values():
        model.seconds = []
    # UNet seconds so far at the end of each step (with --low-memory a step is several UNet calls)
    marks: list[float] = []
    unets = [timed[name] for name in ("unet", "unet_shallow") if name in timed]
    start = time.perf_counter()
    pipe(
        PROMPT,
        steps=settings.steps,
        guidance=settings.guidance,
        seed=0,
        width=settings.width,
        height=settings.height,
        callback=lambda *_: marks.append(sum(sum(u.seconds) for u in unets)),
        deep_cache=settings.deep_cache,
    )
    return {
        "end_to_end_s": time.perf_counter() - start,
        "text_encoder_s": sum(timed["text_encoder"].seconds),
        "unet_steps_s": np.diff([0.0, *marks]).tolist(),
        "vae_decode_s": sum(timed["vae_decoder"].seconds),
        "peak_rss_gb": peak_rss_gb(),
        "runtime": pipe.runtime_info(),  # each network's compute precision, known once compiled
    }


def _receive(conn: Any) -> dict[str, Any]:
    try:
        message = conn.recv()
    except EOFError:
        raise SdcpuError("a bench worker process died; run `sdcpu generate` with the same model to see why") from None
    if "error" in message:
        raise SdcpuError(message["error"])
    return message


def bench(folders: list[Path | None], settings: BenchSettings, progress=print) -> dict[str, Any]:
    """Run each folder (None: the demo model) `settings.runs` times, alternating; medians per folder."""
    if settings.runs < 1 or settings.steps < 1:
        raise SdcpuError("--runs and --steps must be at least 1")
    for folder in folders:
        if folder is not None:
            Manifest.load(folder)  # a missing or foreign folder is refused before any worker starts
    context = mp.get_context("spawn")
    workers: list[tuple[Any, Any]] = []
    infos: list[dict[str, Any]] = []
    runs: list[list[dict[str, Any]]] = [[] for _ in folders]
    try:
        for folder in folders:
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(None if folder is None else str(folder), settings, theirs))
            process.start()
            theirs.close()  # only the worker holds its end, so its exit ends our recv()
            workers.append((ours, process))
            infos.append(_receive(ours))
        for i in range(settings.runs):
            for k, (conn, _) in enumerate(workers):
                conn.send(True)
                runs[k].append(_receive(conn))
                progress(f"run {i + 1}/{settings.runs}, model {k + 1}: {runs[k][-1]['end_to_end_s']:.2f} s")
    finally:
        for conn, process in workers:
            if process.is_alive():
                conn.send(False)
            process.join()
    summaries = [_summary(i, r, settings.deep_cache) for i, r in zip(infos, runs, strict=True)]
    return {"machine": machine(), "settings": settings.record(), "models": summaries}


def _summary(info: dict[str, Any], runs: list[dict[str, Any]], deep_cache: int) -> dict[str, Any]:
    # The first UNet call of a run includes OpenVINO's compile for the shape on the first run only. With
    # DeepCache, steps i % deep_cache == 0 run the whole UNet and the others the shallow pass (whose
    # first call compiles it).
    full = [s for run in runs for i, s in enumerate(run["unet_steps_s"]) if i and i % deep_cache == 0]
    shallow = [s for run in runs for i, s in enumerate(run["unet_steps_s"]) if i > 1 and i % deep_cache]
    extra = {"unet_shallow_step_s": statistics.median(shallow)} if shallow else {}
    return {
        **info,
        "unet_step_s": statistics.median(full or [runs[0]["unet_steps_s"][0]]),
        **extra,
        "unet_first_step_s": runs[0]["unet_steps_s"][0],
        **{key: statistics.median(r[key] for r in runs) for key in ("text_encoder_s", "vae_decode_s", "end_to_end_s")},
        "peak_rss_gb": max(r["peak_rss_gb"] for r in runs),
        **runs[-1]["runtime"],
    }
