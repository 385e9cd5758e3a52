"""`sdcpu bench`: load, each phase and peak memory of one model, or two run alternately (sdcpu/bench/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sdcpu.cli.app import console, fail
from sdcpu.cli.options import DEEP_CACHE_HELP, Model, with_load_options
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions


@with_load_options
def benchmark(
    model: Model = None,
    compare: Annotated[Path | None, typer.Option(help="a second model folder, run alternately with the first")] = None,
    steps: Annotated[int, typer.Option(help="denoising steps per run")] = 20,
    runs: Annotated[int, typer.Option(help="runs per model (medians are reported)")] = 3,
    width: Annotated[int | None, typer.Option(help="image width (default: the model's)")] = None,
    height: Annotated[int | None, typer.Option(help="image height (default: the model's)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results here")] = None,
    deep_cache: Annotated[int, typer.Option(help=DEEP_CACHE_HELP)] = 1,
    *,
    options: LoadOptions,
) -> None:
    """Time load, text encoding, each UNet step, VAE decode and the whole run; peak RSS per model."""
    import json

    from sdcpu.bench.harness import BenchSettings, bench

    settings = BenchSettings(steps=steps, runs=runs, width=width, height=height, deep_cache=deep_cache, load=options)
    folders = [model] if compare is None else [model, compare]
    try:
        if json_out is not None:
            _check_json_out(json_out)  # before minutes of benchmarking, not after
        report = bench(folders, settings, progress=lambda line: console.print(line, highlight=False))
    except SdcpuError as err:
        raise fail(err) from None
    _print_bench(report)
    if json_out is not None:
        partial = json_out.with_name(f".{json_out.name}.partial")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(json_out)  # whole or not at all


def _check_json_out(path: Path) -> None:
    # A regular file to write (or replace): not a folder, a pipe or a device, in a folder that can be written.
    if path.exists() and not path.is_file():
        raise SdcpuError(f"--json {path} is not a regular file (a folder, pipe or device); give a file name")
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK | os.X_OK):
        raise SdcpuError(f"--json {path}: its folder {path.parent} does not exist or is not writable")


def _print_bench(report: dict) -> None:
    from rich.table import Table

    models, machine = report["models"], report["machine"]
    title = f"sdcpu bench: {report['settings']['steps']} steps, medians of {report['settings']['runs']}"
    cpu = f"{machine['cpu']}, {machine['cores']} cores, {' '.join(machine['isa'])}"
    table = Table(title=f"{title}\n{cpu}")
    table.add_column("")
    for i, m in enumerate(models):
        table.add_column(f"{'AB'[i]}: {m['source']}", justify="right")
    if len(models) == 2:
        table.add_column("B / A", justify="right")
    rows = [
        ("load", "load_s", "s"),
        ("text encoder", "text_encoder_s", "s"),
        ("UNet step", "unet_step_s", "s"),
        *([("shallow UNet step", "unet_shallow_step_s", "s")] if "unet_shallow_step_s" in models[0] else []),
        ("first UNet step", "unet_first_step_s", "s"),
        ("VAE decode", "vae_decode_s", "s"),
        ("end to end", "end_to_end_s", "s"),
        ("peak RSS", "peak_rss_gb", "GB"),
    ]
    for label, key in (("weights", "precision"), ("compute", "compute_precision")):
        table.add_row(label, *[str(m[key]) for m in models], *([""] if len(models) == 2 else []))
    for label, key, unit in rows:
        cells = [f"{m[key]:.3f} {unit}" for m in models]
        if len(models) == 2:
            cells.append(f"{models[1][key] / models[0][key]:.2f}x" if models[0][key] else "")
        table.add_row(label, *cells)
    Console().print(table)
