"""The `sdcpu` app and what its commands share: the console, the error exit, and the run-and-save flow
(check --out, load the model, run with a progress bar, save the images and their metadata).

Errors the user can fix (SdcpuError) are printed without a traceback and exit with code 2.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from sdcpu.errors import SdcpuError, SdcpuNotice
from sdcpu.runtime.options import LoadOptions

app = typer.Typer(
    help="Stable Diffusion on the CPU: convert checkpoints, generate images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Boxes and colours for a person at a terminal; plain text for logs, pipes and scripts.
    rich_markup_mode="rich" if sys.stderr.isatty() else None,
)
console = Console(stderr=True)

# Terminal control sequences a library's message (or a file name) may carry: CSI (colours, cursor) and OSC
# (window titles, hyperlinks), then any other escape or control character but newline and tab.
TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]")
Step = Callable[[int, int, Any], Any]  # (steps done, steps, latents): a pipeline's step callback


def fail(err: Exception) -> typer.Exit:
    # Plain text: terminal escapes that came with a library's message are dropped, and so is markup.
    message = TERMINAL_CODES.sub("", str(err))
    console.print("[red]error:[/red] ", escape(message), sep="", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def run_and_save(
    model: Path | None,
    options: LoadOptions,
    out: Path,
    overwrite: bool,
    run: Callable[[Any, Step], Any],
    count: int = 1,
    preview: Callable[[Any], Step | None] | None = None,
    noted: list[warnings.WarningMessage] | None = None,
) -> None:
    """Check --out for `count` images (before any work: a bad one costs nothing), load the model,
    `run(pipe, callback)` with a progress bar (and `preview(pipe)`'s writer), save the images; print the
    warnings given on the way (`noted`: earlier ones). An SdcpuError ends the command with exit code 2."""
    from sdcpu.runtime.io.outputs import output_paths
    from sdcpu.runtime.pipelines import Pipeline

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output_paths(out, count, overwrite)
            with console.status("loading model"):
                pipe = Pipeline.load(model, options)
        writer = preview(pipe) if preview is not None else None
        result, warned = _run_with_progress(lambda callback: run(pipe, callback), writer)
        _save(result, out, overwrite, (noted or []) + caught + warned)
    except SdcpuError as err:
        raise fail(err) from None


def _run_with_progress(run: Callable[[Step], Any], preview: Step | None) -> tuple[Any, list]:
    # `run(callback)` with a progress bar (and previews); its result and the warnings it gave.
    from sdcpu.cli.progress import StepProgress

    with warnings.catch_warnings(record=True) as caught, StepProgress(console) as progress:
        warnings.simplefilter("always")

        def step(done: int, total: int, latents: Any) -> Any:
            if preview is not None:
                preview(done, total, latents)
            return progress.update(done, total, latents)

        result = run(step)
    return result, caught


def _save(result: Any, out: Path, overwrite: bool, warned: list[warnings.WarningMessage]) -> None:
    for w in warned:
        kind = "note:" if issubclass(w.category, SdcpuNotice) else "[yellow]warning:[/yellow]"
        console.print(f"{kind} {escape(str(w.message))}", highlight=False, soft_wrap=True)
    for path in result.save(out, overwrite):
        ran = f"seed {result.settings.seed}, {result.runtime['compute_precision']} on {result.runtime['device']}"
        console.print(f"wrote {escape(TERMINAL_CODES.sub('?', str(path)))} ({ran})", highlight=False, soft_wrap=True)
