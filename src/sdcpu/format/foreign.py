"""Folders converted by other tools: optimum-intel's OpenVINO export and optimum's ONNX export. They
have diffusers' layout (`model_index.json`, a folder per component with its config and graph) and no
`sdcpu.json`.

Their manifest is built from what is there: the configs (family, prediction type, sizes, VAE scaling),
each graph's inputs as declared, the storage precision seen in its constants, and the sha256 of every
file. Hashing a few GB takes a while, so the manifest is kept in the cache folder, keyed by the
folder's path, and built again only when a file's size or mtime changed; the user is told each time it
is built. Without a cache it is built at every load.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import openvino as ov

from sdcpu.cache import FOREIGN_MANIFESTS, VERIFIED_FILES, write_cache_file
from sdcpu.errors import SdcpuError
from sdcpu.format.families import family_of
from sdcpu.format.graph_signature import inputs_of, read_graph
from sdcpu.format.json_bounds import read_json
from sdcpu.format.manifest import (
    COMPONENTS,
    GRAPH_FILE,
    MANIFEST_NAME,
    REQUIRED,
    Manifest,
    describe_files,
    task_of,
)
from sdcpu.format.schema import check_fields
from sdcpu.format.tokenizer_files import TOKENIZER_FILES

SUPPORT_FILES = ("model_index.json", "scheduler/scheduler_config.json")
FORMAT_NAMES = {"openvino": "an OpenVINO", "onnx": "an ONNX"}
# Operations and constant element types -> the storage precision they show (the first match wins).
PRECISION_OF_CONSTANTS = (
    ("FakeQuantize", "int8-hybrid"),
    *[(kind, "int4") for kind in ("u4", "i4", "nf4")],
    *[(kind, "int8") for kind in ("u8", "i8")],
    ("f16", "fp16"),
)


def is_foreign(folder: Path) -> bool:
    """Whether `folder` looks like another tool's export: diffusers' model_index.json, no sdcpu.json."""
    return (folder / "model_index.json").is_file() and not (folder / MANIFEST_NAME).exists()


def foreign_manifest(folder: Path, cache: Path | None, say: Callable[[str], None]) -> Manifest:
    """The manifest of another tool's folder: the one kept in `cache` while the files are unchanged,
    else built (and kept) anew."""
    record = cache / FOREIGN_MANIFESTS.replace("*", _key(folder)) if cache is not None else None
    kept = _read_kept(record, folder) if record is not None else None
    if kept is not None:
        return kept
    start = time.perf_counter()
    manifest = build_manifest(folder, cache / VERIFIED_FILES if cache is not None else None)
    size = sum(info["bytes"] for info in manifest.files.values())
    where = f"kept in {record}" if record is not None else "not kept (no cache)"
    say(
        f"{folder} has no {MANIFEST_NAME}: read as {FORMAT_NAMES[manifest.format]} export in diffusers' layout; "
        f"hashed its {len(manifest.files)} files ({size / 1e6:,.1f} MB) in {time.perf_counter() - start:.1f} s, {where}"
    )
    if record is not None:
        data = json.loads(manifest.to_json()) | {"stats": _stats(folder, manifest.files)}
        write_cache_file(record, json.dumps(data, indent=1, sort_keys=True).encode())
    return manifest


def build_manifest(folder: Path, record: Path | None = None) -> Manifest:
    """A manifest for another tool's export of a Stable Diffusion pipeline, from its files. `record`: the
    record of verified hashes, which gets the hashes computed here."""
    fmt = _format(folder)
    unet, vae = _config(folder, "unet"), _config(folder, "vae_decoder")
    scheduler = _config(folder, "scheduler", "scheduler_config.json")
    vae_factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    latent_channels = int(vae.get("latent_channels", 4))
    task = task_of(unet, latent_channels)
    components = {c: _component(folder, c, fmt) for c in _graphs(folder, fmt)}
    support = [rel for rel in SUPPORT_FILES if (folder / rel).is_file()]
    for tokenizer in ("tokenizer", "tokenizer_2"):  # SDXL has two
        support += [f"{tokenizer}/{name}" for name in TOKENIZER_FILES if (folder / tokenizer / name).is_file()]
    files = [f for info in components.values() for f in info["files"]] + support
    made_by = _made_by(folder)
    return Manifest(
        source=f"{folder.resolve()} ({made_by})",
        family=foreign_family(folder),
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        format=fmt,
        precision=components["unet"]["precision"],
        sample_size=int(unet.get("sample_size", 64)) * vae_factor,
        vae_scale_factor=vae_factor,
        vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
        latent_channels=latent_channels,
        components=components,
        files=describe_files(folder, files, record),
        versions={"sdcpu": metadata.version("sdcpu")},
        extra={"built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "made_by": made_by},
        task=task,
    )


def _graphs(folder: Path, fmt: str) -> list[str]:
    # The components whose graph is there. DeepCache's shallow pass is sdcpu's own: a folder without
    # sdcpu.json does not name the tensor it takes, so it is never used.
    return [c for c in COMPONENTS if c != "unet_shallow" and (folder / c / GRAPH_FILE[fmt]).is_file()]


def _format(folder: Path) -> str:
    for fmt, graph in GRAPH_FILE.items():
        if all((folder / c / graph).is_file() for c in REQUIRED):
            return fmt
    graphs = f"{GRAPH_FILE['openvino']} or {GRAPH_FILE['onnx']}"
    raise SdcpuError(
        f"{folder} is neither an sdcpu model folder (no {MANIFEST_NAME}) nor an OpenVINO or ONNX export sdcpu can "
        f"read (that needs {', '.join(REQUIRED)}, each with {graphs}); convert the checkpoint with "
        "`sdcpu convert SOURCE OUT`"
    )


def foreign_family(folder: Path) -> str:
    """The family of another tool's export, from its UNet config and model_index.json alone (cheap: no
    file is hashed, so an unsupported family is refused before any work)."""
    index = _config(folder, ".", "model_index.json") if (folder / "model_index.json").is_file() else {}
    return family_of(_config(folder, "unet"), index)


def _config(folder: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    path = folder / component / name
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise SdcpuError(f"cannot read {path} ({err}); export the model again") from None
    if not isinstance(data, dict):
        raise SdcpuError(f"{path} is not a configuration object; export the model again")
    return data


def _component(folder: Path, component: str, fmt: str) -> dict[str, Any]:
    graph = folder / component / GRAPH_FILE[fmt]
    # The graph and its weights: OpenVINO's .bin, or ONNX's external data files beside it.
    files = sorted(f for f in graph.parent.iterdir() if f.is_file() and f.name != "config.json")
    model = read_graph(graph)
    return {
        "precision": _stored_precision(model),
        "files": [f"{component}/{f.name}" for f in files],
        "inputs": inputs_of(model, graph),
    }


def _stored_precision(model: ov.Model) -> str:
    ops = model.get_ops()
    seen = {op.get_type_name() for op in ops}
    seen |= {op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant"}
    return next((precision for marker, precision in PRECISION_OF_CONSTANTS if marker in seen), "fp32")


def _made_by(folder: Path) -> str:
    index = _config(folder, "", "model_index.json")
    version = index.get("_diffusers_version")
    return f"exported from diffusers {version}" if version else "exported by another tool"


def _key(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24]


def _stats(folder: Path, files: dict[str, Any]) -> dict[str, list[int]]:
    stats = {}
    for rel in files:
        st = (folder / rel).stat()
        stats[rel] = [st.st_size, st.st_mtime_ns]
    return stats


def _read_kept(record: Path, folder: Path) -> Manifest | None:
    # The kept manifest, while this sdcpu built it, no graph came or went, and every file it lists has the
    # size and mtime it had when hashed.
    try:
        data = read_json(record)
        stats = data.pop("stats")
        graphs = _graphs(folder, data["format"])
        if data["versions"].get("sdcpu") != metadata.version("sdcpu") or set(graphs) != set(data["components"]):
            return None
        if any(not (folder / rel).is_file() or _stats(folder, {rel: 0})[rel] != stat for rel, stat in stats.items()):
            return None
        data.pop("sdcpu_manifest")
        check_fields(data)
        return Manifest(**data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or damaged: build it again
        return None
