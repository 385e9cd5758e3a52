"""The tokenizer as OpenVINO IRs, `tokenizer/openvino_tokenizer.xml` and `openvino_detokenizer.xml`,
made by openvino-tokenizers (in the export extra) from the folder's CLIP tokenizer files. openvino.genai
and optimum-intel read them; sdcpu's runtime keeps its own tokenizer (runtime/components/tokenizer.py) and does
not need them."""

from __future__ import annotations

from pathlib import Path

from sdcpu.export.folders import save_openvino

IR_NAMES = ("openvino_tokenizer", "openvino_detokenizer")


def write_tokenizer_irs(folder: Path) -> list[str]:
    """Write both IRs (.xml and .bin) into the tokenizer `folder`; returns their file names, or [] where
    openvino-tokenizers is not installed."""
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError:  # optional: the folder still runs in sdcpu and optimum-intel
        return []
    from transformers import CLIPTokenizer

    graphs = convert_tokenizer(CLIPTokenizer.from_pretrained(folder), with_detokenizer=True)
    names = []
    for name, graph in zip(IR_NAMES, graphs, strict=True):
        save_openvino(graph, folder / f"{name}.xml")
        names += [f"{name}.xml", f"{name}.bin"]
    return [n for n in names if (folder / n).exists()]
