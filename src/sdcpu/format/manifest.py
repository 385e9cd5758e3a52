"""The manifest `sdcpu.json` that makes a converted model folder self-describing and verifiable.

It records where the model came from, what it is (family, prediction type, native size, VAE
scaling), how it was exported (format, precision per component, library versions) and the sha256
of every weight and graph file, so a damaged or half-copied folder is refused before it is run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sdcpu.cache import write_cache_file
from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json
from sdcpu.format.schema import TASKS, check_fields

T = TypeVar("T")

MANIFEST_NAME = "sdcpu.json"
# 3: `unet` has the single output `out_sample` (DeepCache's features are a named tensor inside it, listed
#    in its `inner_outputs`), IRs store the timestep as int64, and each component records its `inputs`.
#    (2: a two-output unet; 1 allowed folders without unet_shallow or vae_encoder.)
# 4: `task` names what the UNet was trained for (TASKS); version 3 folders are text-to-image.
MANIFEST_VERSION = 4
READABLE_VERSIONS = (3, 4)
COMPONENTS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "unet_shallow", "vae_decoder", "vae_encoder")
COMPONENTS += ("tiny_vae_decoder", "tiny_vae_encoder")  # TAESD, when converted with --tiny-vae
COMPONENTS += ("depth_estimator",)  # depth2img's DPT
# What a folder needs for txt2img; the others serve one feature each (see `Manifest.require`).
REQUIRED = ("text_encoder", "unet", "vae_decoder")
FEATURES = {
    "unet_shallow": "DeepCache (--deep-cache)",
    "vae_encoder": "img2img (--init-image) and inpainting",
    "depth_estimator": "depth2img without --depth-map",
}
VERIFY_MODES = ("fast", "full", "sizes")
# The file holding each component's graph, per format (optimum's names, so other tools can read it).
GRAPH_FILE = {"openvino": "openvino_model.xml", "onnx": "model.onnx"}


def task_of(unet_config: dict[str, Any], latent_channels: int) -> str:
    """What a UNet was trained for, from the input channels it takes beyond the latents (TASKS)."""
    extra = int(unet_config.get("in_channels", latent_channels)) - latent_channels
    for task, channels in TASKS.items():
        if channels == extra:
            return task
    known = ", ".join(f"{latent_channels + c} ({t})" for t, c in TASKS.items())
    raise SdcpuError(
        f"the UNet takes {latent_channels + extra} input channels with {latent_channels}-channel latents; "
        f"sdcpu runs UNets with {known}"
    )


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    source: str
    family: str
    prediction_type: str
    format: str
    precision: str
    sample_size: int
    vae_scale_factor: int
    vae_scaling_factor: float
    latent_channels: int
    components: dict[str, dict[str, Any]]
    files: dict[str, dict[str, Any]]
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "text-to-image"  # one of format/schema.py TASKS: what the UNet's extra input channels carry

    def to_json(self) -> str:
        data = {"sdcpu_manifest": MANIFEST_VERSION, **self.__dict__}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read `folder/sdcpu.json`; raises SdcpuError saying what to do when it is missing or unreadable."""
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise SdcpuError(f"model folder {folder} does not exist; convert a checkpoint with `sdcpu convert`")
        if (Path(folder) / "sdcpu-controlnet.json").exists():
            raise SdcpuError(f"{folder} is a ControlNet, not a model; give it with --control FOLDER:IMAGE")
        if not path.exists():
            raise SdcpuError(
                f"{folder} is not an sdcpu model folder (no {MANIFEST_NAME}); "
                "convert a checkpoint into it with `sdcpu convert SOURCE OUT`"
            )
        try:
            data = read_json(path)
            version = data.pop("sdcpu_manifest", None) if isinstance(data, dict) else None
            if version in READABLE_VERSIONS:
                data.setdefault("task", "text-to-image")
                check_fields(data)
                return cls(**data)
        except (OSError, ValueError, RecursionError) as err:  # SchemaError and JSON errors are ValueErrors
            raise SdcpuError(f"{path} is damaged ({err}); convert the model again") from None
        if version is None:
            raise SdcpuError(f"{path} is damaged (not an sdcpu manifest); convert the model again")
        if isinstance(version, int) and version > MANIFEST_VERSION:
            raise SdcpuError(f"{folder} was converted by a newer sdcpu (manifest version {version}); upgrade sdcpu")
        raise SdcpuError(
            f"{folder} was converted by an older sdcpu (manifest version {version}, this one reads "
            f"{MANIFEST_VERSION}); convert the checkpoint again with `sdcpu convert`"
        )

    def content_hash(self) -> str:
        """A short hash of every file's sha256, naming these weights (as A1111's 10-digit model hash)."""
        return files_digest(self.files)[:10]

    def graph_path(self, folder: Path, component: str) -> Path:
        return Path(folder) / component / GRAPH_FILE[self.format]

    def require(self, component: str) -> None:
        """Raise SdcpuError, saying what to do, when this folder lacks `component`."""
        if component not in self.components:
            raise SdcpuError(
                f"this model folder has no {component}, which {FEATURES.get(component, 'this')} needs; "
                "convert the checkpoint with `sdcpu convert` to get it"
            )

    def input_shape(self, component: str, name: str) -> tuple[int, ...]:
        """The shape the graph of `component` declares for its input `name`, -1 for a dynamic size."""
        inputs = self.components[component]["inputs"]
        if name not in inputs:
            raise SdcpuError(f"the {component} of this model folder has no input {name!r}; it cannot run here")
        return tuple(inputs[name]["shape"])

    def verify(self, folder: Path, mode: str = "fast", record: Path | None = None) -> None:
        """Check that every listed file is inside the folder and present with its size, and in modes
        "fast" and "full" with its sha256 ("sizes": not hashed). `record`: a JSON file of hashes already
        checked. In "fast" mode a file whose size, mtime and inode are unchanged since is not read
        again (as `git status` does), so a warm start skips hashing gigabytes; it trusts that nothing
        rewrote the file and restored all three. "full" hashes every file again."""
        verify_files(folder, self.files, mode, record, MANIFEST_NAME)
        missing = [c for c in REQUIRED if c not in self.components]
        if missing:
            raise SdcpuError(f"model folder {folder} lacks {', '.join(missing)}; convert the model again")


def files_digest(files: dict[str, dict[str, Any]]) -> str:
    """The sha256 of the listing of every file's path and sha256: what names a folder's weights."""
    listing = "\n".join(f"{rel} {info['sha256']}" for rel, info in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def verify_files(
    folder: Path, files: dict[str, dict[str, Any]], mode: str, record: Path | None, manifest_name: str
) -> None:
    """Manifest.verify's check of the listed `files` (path -> sha256 and bytes) of `folder`."""
    if mode not in VERIFY_MODES:
        raise SdcpuError(f"unknown verify mode {mode!r}; choose one of: {', '.join(VERIFY_MODES)}")
    stored = _read_record(record) if mode != "sizes" else {}
    known = dict(stored) if mode == "fast" else {}  # "full" hashes again whatever the record says
    root = Path(folder).resolve()
    for rel, info in sorted(files.items()):
        path = Path(folder) / rel
        if not path.resolve().is_relative_to(root):  # a link out of the folder
            raise SdcpuError(f"{rel} in {folder} points outside the folder; convert the model again")
        if not path.is_file():
            raise SdcpuError(f"model folder {folder} is incomplete: {rel} is missing; convert the model again")
        if path.stat().st_size != info["bytes"]:
            raise SdcpuError(f"{rel} in {folder} has the wrong size; the folder is damaged, convert it again")
        if mode != "sizes" and _known_sha256(path, known) != info["sha256"]:
            raise SdcpuError(
                f"{rel} in {folder} does not match its sha256 in {manifest_name}; "
                "the file was changed or damaged, convert the model again"
            )
    if record is not None and stored | known != stored:  # written only when a file was hashed anew
        _write_record(record, stored | known)


def _known_sha256(path: Path, known: dict[str, Any]) -> str:
    st = path.stat()
    key, stamp = str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
    entry = known.get(key)
    if not isinstance(entry, dict) or entry.get("stat") != stamp or not isinstance(entry.get("sha256"), str):
        known[key] = {"stat": stamp, "sha256": sha256_file(path)}
    return str(known[key]["sha256"])


def _read_record(record: Path | None) -> dict[str, Any]:
    try:
        data = read_json(record) if record is not None and record.is_file() else {}
    except (OSError, ValueError):  # a damaged record only costs a re-hash
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(record: Path, known: dict[str, Any]) -> None:
    write_cache_file(record, json.dumps(known, indent=1, sort_keys=True).encode())


def describe_files(folder: Path, relative_paths: list[str], record: Path | None = None) -> dict[str, dict[str, Any]]:
    """{path: {sha256, bytes}} for the manifest, computed from the files as written. `record`: the record of
    hashes that `verify` reads, which gets these too (a "fast" verify right after then reads no file)."""
    stored = _read_record(record)
    known = dict(stored)
    out = {}
    for rel in sorted(relative_paths):
        path = Path(folder) / rel
        out[rel] = {"sha256": _known_sha256(path, known), "bytes": path.stat().st_size}
    if record is not None and known != stored:
        _write_record(record, known)
    return out


def load_apart(cls: type[T], path: Path, key: str, version: int, valid: Callable[[T], bool], again: str) -> T:
    """The manifest at `path` of a folder converted on its own (a ControlNet, an annotator): `key` naming
    `version`, the rest `cls`'s fields, `valid` of it; SdcpuError saying to `again` otherwise."""
    try:
        data = read_json(path)
        found = data.pop(key, None) if isinstance(data, dict) else None
        if found == version:
            manifest = cls(**data)
            if valid(manifest):
                return manifest
    except (OSError, ValueError, TypeError, RecursionError) as err:
        raise SdcpuError(f"{path} is damaged ({err}); {again}") from None
    raise SdcpuError(f"{path} is damaged or from another sdcpu version; {again}")
