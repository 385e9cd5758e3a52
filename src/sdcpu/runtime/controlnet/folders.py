"""The ControlNet folder (A1111's `models/ControlNet`, `--controlnet-dir`): converted ControlNets, one
folder each, named by their folder's name, or by A1111's title "NAME [HASH]". A name is never a path:
`../x` is refused, as is a link out of the folder."""

from __future__ import annotations

import re
from pathlib import Path

from sdcpu.errors import SdcpuError
from sdcpu.format.controlnet import CONTROLNET_MANIFEST, ControlNetManifest
from sdcpu.format.names import is_plain_name

# "NAME [HASH]", as A1111 lists models. Bounded: unbounded, `.*?\s*` took 82 s on a name of 300 KB of spaces.
TITLE = re.compile(r"^(?P<name>[^\[]{0,255}?)\s{0,16}\[(?P<hash>[0-9a-fA-F]{1,64})\]$")


def controlnet_names(folder: Path | None) -> list[str]:
    """The ControlNets in `folder` by name (read at every call: nothing to refresh)."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CONTROLNET_MANIFEST).is_file())


def controlnet_title(folder: Path) -> str:
    """A1111's title of a ControlNet: "NAME [HASH]", the hash the PNG records."""
    return f"{folder.name} [{ControlNetManifest.load(folder).short_hash()}]"


def _is_controlnet(path: Path) -> bool:
    try:
        return (path / CONTROLNET_MANIFEST).is_file()
    except OSError:  # a name too long for the filesystem is not a path to a ControlNet
        return False


def find_controlnet(given: str | Path, folder: Path | None, *, paths: bool = True) -> Path:
    """A ControlNet folder from a path (with `paths`: the CLI's and Python's, never an HTTP client's), or
    from a name or title in the ControlNet folder `folder`."""
    if paths and _is_controlnet(Path(given).expanduser()):
        return Path(given).expanduser()
    text = str(given).strip()
    match = TITLE.match(text)
    name = match["name"] if match else text
    if folder is None:
        raise SdcpuError(f"no ControlNet folder {given}; give a converted ControlNet's folder, or --controlnet-dir DIR")
    if not is_plain_name(name):
        raise SdcpuError(
            f"ControlNet {text!r}: named by its folder's name in the ControlNet folder (at most 255 bytes), "
            "not by a path"
        )
    root = folder.resolve()
    found = (root / name).resolve()
    if found.parent != root or not (found / CONTROLNET_MANIFEST).is_file():
        available = ", ".join(controlnet_names(folder)[:10]) or "none"
        raise SdcpuError(f"no ControlNet named {name!r} in {folder} (found: {available})")
    if match and ControlNetManifest.load(found).short_hash() != match["hash"].lower():
        raise SdcpuError(f"ControlNet {name!r} in {folder} is not {text!r}: its hash differs")
    return found
