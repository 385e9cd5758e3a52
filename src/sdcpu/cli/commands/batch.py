"""`sdcpu batch`: one image per line of a prompt list, resumable (sdcpu/batch/)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sdcpu.batch.records import FAILURES
from sdcpu.cli.app import console, fail
from sdcpu.cli.options import Guidance, Height, Model, NegativePrompt, Scheduler, Steps, Width, with_load_options
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions

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
    *,
    options: LoadOptions,
) -> None:
    """Generate one image per line of PROMPTS into OUT; run it again to finish what a stopped run left."""
    from sdcpu.batch.local import plan, run_local
    from sdcpu.batch.prompts import read_prompts
    from sdcpu.batch.records import check_out
    from sdcpu.runtime.pipelines.base import Pipeline

    defaults = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, width=width, height=height)
    defaults |= dict(scheduler=scheduler, strength=strength)
    report = None
    try:
        check_out(out)
        items, bad = read_prompts(prompts, defaults)
        todo, report = plan(out, items, bad)
        if todo:
            with console.status("loading model"):
                pipe = Pipeline.load(model, options)
            with _progress() as bar:
                task = bar.add_task("images", total=len(todo), rate="")
                started = time.perf_counter()
                run_local(pipe, out, todo, report, lambda done, total, s: _advance(bar, task, done, started))
    except SdcpuError as err:
        raise fail(err) from None
    except KeyboardInterrupt:
        made = report.made if report is not None else 0
        console.print(f"stopped: {made} made; run the same command again to go on", highlight=False)
        raise typer.Exit(code=130) from None
    _summary(out, len(items) + len(bad), report)


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
