"""`sdcpu batch`: one image per line of a prompt list, resumable (sdcpu/batch/)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sdcpu.batch.records import FAILURES
from sdcpu.cli.app import console, fail
from sdcpu.cli.options import Guidance, Height, Model, NegativePrompt, Scheduler, Steps, Width, with_load_options
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions

RAY_HELP = "run on a Ray cluster (pip install 'sdcpu[ray]'): actors load the model, OUT must be seen by every node"
PROMPTS_HELP = "a JSON Lines file (one object per image: prompt and any generate setting), a .csv, or - for stdin"


@with_load_options
def batch(
    prompts: Annotated[str, typer.Argument(help=PROMPTS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="the folder for the PNGs, results.jsonl, failures.jsonl")],
    model: Model = None,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    guidance: Guidance = None,
    width: Width = None,
    height: Height = None,
    scheduler: Scheduler = None,
    strength: Annotated[float | None, typer.Option(help="img2img and inpaint lines: the default strength")] = None,
    ray: Annotated[bool, typer.Option("--ray", help=RAY_HELP)] = False,
    ray_address: Annotated[str, typer.Option(help="with --ray: the head's HOST:PORT, or auto")] = "auto",
    workers: Annotated[int | None, typer.Option(help="with --ray: actors [default: one per node]", min=1)] = None,
    cpus_per_worker: Annotated[
        int | None, typer.Option(help="with --ray: CPUs (and threads) per actor [default: a node's]", min=1)
    ] = None,
    *,
    options: LoadOptions,
) -> None:
    """Generate one image per line of PROMPTS into OUT; run it again to finish what a stopped run left."""
    from sdcpu.batch.local import plan
    from sdcpu.batch.on_ray import RaySettings
    from sdcpu.batch.prompts import read_prompts
    from sdcpu.batch.records import check_out

    given = {"--ray-address": ray_address != "auto", "--workers": workers, "--cpus-per-worker": cpus_per_worker}
    if not ray and any(given.values()):
        raise fail(SdcpuError(f"{', '.join(k for k, v in given.items() if v)}: for a batch on Ray; add --ray"))
    defaults = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, width=width, height=height)
    defaults |= dict(scheduler=scheduler, strength=strength)
    report = None
    try:
        check_out(out)
        items, bad = read_prompts(prompts, defaults)
        todo, report = plan(out, items, bad)
        if todo:
            settings = RaySettings(ray_address, workers, cpus_per_worker) if ray else None
            _run(model, options, out, todo, report, settings)
    except SdcpuError as err:
        raise fail(err) from None
    except KeyboardInterrupt:
        made = report.made if report is not None else 0
        console.print(f"stopped: {made} made; run the same command again to go on", highlight=False)
        raise typer.Exit(code=130) from None
    _summary(out, len(items) + len(bad), report)


def _run(model: Path | None, options: LoadOptions, out: Path, todo: list, report: Any, ray: Any) -> None:
    # In this process, or (ray: RaySettings) on a Ray cluster, with the same progress bar.
    from sdcpu.batch.local import run_local
    from sdcpu.runtime.pipelines.base import Pipeline

    if ray is not None:
        from sdcpu.batch.on_ray import join, run_ray

        joined = join(model, options, ray.address)  # before the bar: a mistake is said at once
    else:
        with console.status("loading model"):
            pipe = Pipeline.load(model, options)
    with _progress() as bar:
        task = bar.add_task("images", total=len(todo), rate="")
        started = time.perf_counter()

        def progress(done: int, total: int, seconds: float) -> None:
            _advance(bar, task, done, started)

        if ray is None:
            run_local(pipe, out, todo, report, progress)
        else:  # paths absolute: the actors do not run in this folder
            where = str(model.absolute() if model.exists() else model) if model is not None else None
            run_ray(joined, where, absolute(options), out.absolute(), todo, report, progress, ray)


def absolute(options: LoadOptions) -> LoadOptions:
    def path(given: Path | None) -> Path | None:
        return Path(given).absolute() if given is not None else None

    return replace(
        options,
        cache_dir=path(options.cache_dir),
        lora_dir=path(options.lora_dir),
        controlnet_dir=path(options.controlnet_dir),
        depth_estimator=path(options.depth_estimator),
    )


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    return Progress(*columns, TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)


def _advance(bar: Progress, task: Any, done: int, started: float) -> None:
    per_minute = done / max(time.perf_counter() - started, 1e-9) * 60
    bar.update(task, completed=done, rate=f"{per_minute:.1f} images/min")


def _summary(out: Path, lines: int, report: Any) -> None:
    console.print(
        f"{report.made} made, {report.done_before} done before, {len(report.failed)} failed, of {lines} lines "
        f"in {out} ({report.seconds:.1f} s generating)",
        highlight=False,
    )
    if report.failed:
        raise fail(SdcpuError(f"{len(report.failed)} line(s) could not run; their reasons are in {out / FAILURES}"))
