"""The layers of a graph a LoRA can adapt, and the names LoRA files give them.

A converted graph keeps each PyTorch module's path in its node names: OpenVINO's PyTorch frontend names
a Linear's MatMul `__module.<path>/aten::linear/MatMul`, and an IR converted from ONNX keeps the ONNX
exporter's `/<path, slashed>/MatMul`. The path may start with the exporter's wrapper (sdcpu's `model.`),
and a LoRA file may name more than the graph does (`text_model.` before a CLIP layer): a file's layer
matches the graph's when either name, underscored, is the other or ends with `_` and the other. kohya's
SDXL LoRAs name the UNet's layers as the original SGM code did (`input_blocks_4_1_...`); those are
mapped from the UNet's config (format/ldm_names.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdcpu.format.ldm_names import unet_original_names

TORCH_NAME = re.compile(r"^__module\.(?P<path>[^/]+)/aten::(?:linear|_convolution)/")
ONNX_NAME = re.compile(r"^/(?P<path>.+)/(?:MatMul|Conv|Gemm)[^/]*$")
# What may lie between a weight Constant and its MatMul or Convolution: a compressed weight's decompression
# (int8, int4, fp16) and a layout change.
WEIGHT_CHAIN = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"}


@dataclass(frozen=True)
class Layer:
    """An adaptable layer: its module path as the graph names it, "linear" or "conv", and its weight's
    shape as PyTorch holds it: (out, in) or (out, in, kh, kw)."""

    path: str
    kind: str
    shape: tuple[int, ...]


def graph_layers(model: Any) -> dict[str, list[Any]]:
    """{module path: its MatMul or Convolution nodes} of an `openvino.Model`, for every node whose weight
    is a constant (decompressed or not) and whose name carries a module path."""
    found: dict[str, list[Any]] = {}
    for node in model.get_ordered_ops():
        if node.get_type_name() not in ("MatMul", "Convolution") or not _constant_weight(node):
            continue
        match = TORCH_NAME.match(node.get_friendly_name()) or ONNX_NAME.match(node.get_friendly_name())
        if match is not None:
            path = match["path"].replace("/", ".")
            found.setdefault(path, []).append(node)
    return found


def describe(path: str, node: Any) -> Layer:
    """The Layer a MatMul or Convolution node computes."""
    shape = tuple(int(d) for d in node.input(1).get_partial_shape().to_shape())
    if node.get_type_name() == "Convolution":
        return Layer(path, "conv", shape)
    transposed = bool(node.get_attributes().get("transpose_b", False))
    return Layer(path, "linear", shape if transposed else shape[::-1])


def _constant_weight(node: Any) -> bool:
    source = node.input_value(1).get_node()
    while source.get_type_name() in WEIGHT_CHAIN:
        source = source.input_value(0).get_node()
    return bool(source.get_type_name() == "Constant")


class LayerNames:
    """Resolves the layer names of a LoRA file to a graph's module paths."""

    def __init__(self, paths: list[str], unet_config: Mapping[str, Any] | None = None):
        self._full = {path.replace(".", "_"): path for path in paths}
        self._suffixes: dict[str, str | None] = {}  # underscored suffix at a dot -> path (None: ambiguous)
        for path in paths:
            parts = path.split(".")
            for i in range(1, len(parts)):
                key = "_".join(parts[i:])
                self._suffixes[key] = path if self._suffixes.get(key, path) == path else None
        self._aliases = {}
        if unet_config is not None and "down_block_types" in unet_config:
            # The graph's paths start with the wrapper: strip it to the diffusers names the map knows.
            bare = {path.split(".", 1)[1] if path.startswith("model.") else path: path for path in paths}
            for name, original in unet_original_names(list(bare), unet_config).items():
                self._aliases[original.replace(".", "_")] = bare[name]

    def resolve(self, name: str) -> str | None:
        """The graph's path for a file's layer name (dotted or underscored), None if it has none."""
        key = name.replace(".", "_")
        if key in self._full:
            return self._full[key]
        if key in self._aliases:
            return self._aliases[key]
        if self._suffixes.get(key):
            return self._suffixes[key]
        for i, char in enumerate(key):  # the graph's whole path, ending the file's name
            if char == "_" and key[i + 1 :] in self._full:
                return self._full[key[i + 1 :]]
        return None
