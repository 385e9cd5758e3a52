"""The `sdcpu` command line: the app (cli/app.py) and its commands (cli/commands/), registered here in the
order `sdcpu --help` lists them. No logic in either: parse options, call the library, report."""

from __future__ import annotations

import sys

from sdcpu.cli.app import app, fail
from sdcpu.cli.commands import batch, bench, convert, edit, evaluate, generate, serve, system
from sdcpu.errors import SdcpuError

app.command()(convert.convert)
app.command()(generate.generate)
app.command()(edit.inpaint)
app.command()(edit.upscale)
app.command()(edit.depth2img)
app.command()(batch.batch)
app.command(name="eval")(evaluate.evaluate)
app.command(name="bench")(bench.benchmark)
app.command()(serve.serve)
app.command()(system.info)
app.command(name="cache")(system.cache_command)

__all__ = ["app", "main"]


def main() -> None:
    """`sdcpu`, with a last line of defence: an OSError that no check foresaw (a name too long for the
    filesystem, a disk that fails) is said in one line with exit code 2, like every other bad input,
    never as a traceback. Checks that know what went wrong raise SdcpuError before it comes to this."""
    try:
        sys.exit(app())
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        sys.exit(fail(SdcpuError(f"cannot use {where}{err.strerror or err}")).exit_code)
