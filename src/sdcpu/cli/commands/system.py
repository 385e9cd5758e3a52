"""`sdcpu info` (the CPU and what auto precision picks) and `sdcpu cache` (compiled models)."""

from __future__ import annotations

from typing import Annotated

import typer

from sdcpu.cli.app import fail
from sdcpu.errors import SdcpuError


def info() -> None:
    """Show the CPU, its ISA, OpenVINO's capabilities and default precision, and what auto precision picks."""
    from sdcpu.runtime.precision import system_report

    for key, value in system_report().items():
        typer.echo(f"{key}: {value}")


def cache_command(
    clear: Annotated[bool, typer.Option("--clear", help="delete the compiled models and the record of hashes")] = False,
) -> None:
    """Show where compiled models are cached ($SDCPU_CACHE_DIR or ~/.cache/sdcpu) and their size; --clear
    empties it (the next run compiles again)."""
    from sdcpu.cache import cache_files, cache_limit, clear_cache, default_cache_dir

    folder = default_cache_dir()
    files = cache_files(folder)
    try:
        limit = f"kept under {cache_limit() / 2**30:g} GB ($SDCPU_CACHE_MAX_GB)"
    except SdcpuError as err:
        raise fail(err) from None
    typer.echo(f"{folder}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:,.0f} MB, {limit}")
    if clear:
        try:
            freed = clear_cache(folder)
        except SdcpuError as err:
            raise fail(err) from None
        typer.echo(f"cleared: {freed / 1e6:,.0f} MB freed")
