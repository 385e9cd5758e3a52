"""`sdcpu eval`: a model scored on the demo world's held-out captions by its oracle (sdcpu/demo/oracle.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdcpu.cli.app import fail
from sdcpu.cli.options import (
    DEEP_CACHE_HELP,
    INT8_ACTIVATIONS_HELP,
    INT8_FLAG,
    PRECISION_HELP,
    Backend,
    ComputePrecision,
    Model,
    load_options,
)
from sdcpu.errors import SdcpuError


def evaluate(
    model: Model = None,
    reference: Annotated[Path | None, typer.Option(help="another model folder to compare with (SSIM, PSNR)")] = None,
    count: Annotated[int, typer.Option(help="how many held-out captions (at most 240)", min=1, max=240)] = 240,
    steps: Annotated[int, typer.Option(help="denoising steps")] = 20,
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale")] = 7.5,
    scheduler: Annotated[str | None, typer.Option(help="scheduler (default: the model's own)")] = None,
    deep_cache: Annotated[int, typer.Option(help=DEEP_CACHE_HELP + "; for --model only, not --reference")] = 1,
    backend: Backend = None,
    compute_precision: Annotated[
        ComputePrecision, typer.Option(help=PRECISION_HELP + "; for --model only, --reference runs at f32")
    ] = ComputePrecision.auto,
    int8_activations: Annotated[
        bool | None, typer.Option(INT8_FLAG, help=INT8_ACTIVATIONS_HELP + "; for --model only")
    ] = None,
) -> None:
    """Score a model on the demo world's held-out captions (prompt-following accuracy by the oracle)."""
    from sdcpu.demo.oracle import evaluate as run_eval
    from sdcpu.runtime.pipelines.base import Pipeline

    options = load_options(backend, compute_precision=compute_precision, int8_activations=int8_activations)
    try:
        pipe = Pipeline.load(model, options)
        reference_options = load_options(compute_precision=ComputePrecision.f32)
        other = Pipeline.load(reference, reference_options) if reference is not None else None

        def runner(p: Pipeline, deep: int = 1):
            return lambda caption, seed: p(
                caption, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler, deep_cache=deep
            ).array[0]

        report = run_eval(runner(pipe, deep_cache), count, runner(other) if other is not None else None)
    except SdcpuError as err:
        raise fail(err) from None
    for key, value in pipe.runtime_info().items():
        typer.echo(f"{key}: {value}")
    for name, score in report.summary().items():
        typer.echo(f"{name}: {score:.4f}")
