"""The `sdcpu` command line: the app (cli/app.py) and its commands (cli/commands/), registered here in the
order `sdcpu --help` lists them. No logic in either: parse options, call the library, report."""

from __future__ import annotations

import sys

from sdcpu.cli.app import app
from sdcpu.cli.commands import bench, convert, edit, evaluate, generate, serve, system

app.command()(convert.convert)
app.command()(generate.generate)
app.command()(edit.inpaint)
app.command()(edit.upscale)
app.command()(edit.depth2img)
app.command(name="eval")(evaluate.evaluate)
app.command(name="bench")(bench.benchmark)
app.command()(serve.serve)
app.command()(system.info)
app.command(name="cache")(system.cache_command)

__all__ = ["app", "main"]


def main() -> None:
    sys.exit(app())
