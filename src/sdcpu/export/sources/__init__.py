"""Where a checkpoint comes from: a diffusers folder (diffusers_folder.py), a Hugging Face hub id (hub.py),
or a single file (single_file.py). Every source yields the same `Source` (base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.export.preflight import check_diffusers_folder
from sdcpu.export.sources.base import Source, read_config
from sdcpu.export.sources.diffusers_folder import open_diffusers_folder, open_tiny_vae
from sdcpu.export.sources.hub import download
from sdcpu.export.sources.single_file import open_single_file

__all__ = ["Source", "locate", "open_source", "open_tiny_vae", "read_config"]


def locate(source: str) -> Path:
    """Where SOURCE's files are: its own path, or a hub id's folder, fetched (hub.py)."""
    path = Path(source).expanduser()
    return path if path.exists() else download(source)


def open_source(source: str, where: Path | None = None, **single_file_options: Any) -> Source:
    """Resolve SOURCE (folder, single file or hub id), checked by `preflight`, into a Source; raises
    SdcpuError if it cannot. `where`: its files, if `locate` found them already."""
    path = Path(source).expanduser()
    if path.is_file():
        return open_single_file(path, **single_file_options)
    _refuse_single_file_options(source, single_file_options)
    if path.is_dir():
        return open_diffusers_folder(path, str(path.resolve()))
    folder = where or download(source)
    check_diffusers_folder(folder)  # a local source was checked by `preflight`, before torch was imported
    return open_diffusers_folder(folder, source)


def _refuse_single_file_options(source: str, options: dict[str, Any]) -> None:
    # A folder or hub id brings its own configs and tokenizer: these would be ignored, silently.
    given = [f"--{name.removesuffix('_dir')}" for name, value in options.items() if name != "work_dir" and value]
    if given:
        raise SdcpuError(
            f"{', '.join(given)}: for single-file checkpoints only; {source} is a diffusers folder or hub id "
            "with its own configs and tokenizer: leave the option out"
        )
