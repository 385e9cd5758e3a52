"""The tokenizer as OpenVINO IRs, `tokenizer/openvino_tokenizer.xml` and `openvino_detokenizer.xml`,
made by openvino-tokenizers (in the export extra) from the folder's CLIP tokenizer files. openvino.genai
and optimum-intel read them; sdcpu's runtime keeps its own tokenizer (runtime/components/tokenizer.py) and does
not need them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sdcpu.export.folders import save_openvino

IR_NAMES = ("openvino_tokenizer", "openvino_detokenizer")
# The IR files already made in this process, by the digest of the tokenizer files they were made from:
# converting CLIP's 49,408-token vocabulary takes seconds, and one process often converts one model
# several times (a precision each, or a test run's fixtures). The IRs depend on those files alone.
_MADE: dict[str, dict[str, bytes]] = {}


def write_tokenizer_irs(folder: Path) -> list[str]:
    """Write both IRs (.xml and .bin) into the tokenizer `folder`; returns their file names, or [] where
    openvino-tokenizers is not installed."""
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError:  # optional: the folder still runs in sdcpu and optimum-intel
        return []
    from transformers import CLIPTokenizer

    key = _digest(folder)
    if key not in _MADE:
        graphs = convert_tokenizer(CLIPTokenizer.from_pretrained(folder), with_detokenizer=True)
        for name, graph in zip(IR_NAMES, graphs, strict=True):
            save_openvino(graph, folder / f"{name}.xml")
        made = [folder / f"{name}{suffix}" for name in IR_NAMES for suffix in (".xml", ".bin")]
        _MADE[key] = {path.name: path.read_bytes() for path in made if path.exists()}
    for name, data in _MADE[key].items():
        (folder / name).write_bytes(data)
    return list(_MADE[key])


def _digest(folder: Path) -> str:
    """sha256 over the tokenizer files' names and contents (any IRs already there left out)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(IR_NAMES):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
