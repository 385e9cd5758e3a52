"""Low-rank branches: y = W x + up (down x) beside each adapted layer, with `down` and `up` as graph inputs.

The weights W stay as they were stored (fp32, fp16, int8, int4, or int8 with quantized activations),
so one compiled graph runs every LoRA: switching LoRAs or scales feeds other `down` and `up` tensors and
compiles nothing. Several LoRAs on one layer are concatenated along the rank, each `up` times its scale:
Σ s_i up_i down_i = [s_1 up_1 | s_2 up_2] [down_1; down_2]. Shapes are static, as the CPU plugin runs
fastest: each layer's rank is padded with zeros to one `rank` for the graph, a power of two, so a graph
compiled for rank 32 runs any mix of LoRAs up to that total without compiling again. (openvino.genai
adds the same branches, holding the tensors in state variables.)

On a layer that is a convolution the branch is two convolutions: `down` with the layer's kernel, stride,
padding and dilation, then `up` as a 1x1 convolution (LoCon). In a graph with quantized activations
(int8-hybrid), the branch reads the layer's input before its FakeQuantize: the update is computed in
float, as the LoRA was trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Set
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from sdcpu.errors import SdcpuError
from sdcpu.runtime.engines.passes import GraphPass
from sdcpu.runtime.lora.formats import Update
from sdcpu.runtime.lora.layers import Layer, describe, graph_layers

REVISION = 1
MIN_RANK = 8


@dataclass(frozen=True)
class BranchPlan:
    """The layers of one graph that get a branch, and the rank every branch has."""

    layers: tuple[Layer, ...]
    rank: int

    def grown(self, layers: Set[Layer], rank: int) -> BranchPlan:
        """This plan with more layers or a higher rank: a graph's plan only grows, so that switching
        among LoRAs already seen never compiles again."""
        rank = max(self.rank, MIN_RANK, 1 << max(rank - 1, 0).bit_length())
        return BranchPlan(tuple(sorted(set(self.layers) | layers, key=lambda layer: layer.path)), rank)

    @property
    def key(self) -> str:
        text = ";".join(f"{layer.path}{layer.shape}" for layer in self.layers) + f";rank {self.rank}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def graph_pass(self, component: str, bf16: bool = False) -> GraphPass:
        """The pass that adds this plan's branches (its key names the layers and the rank); `bf16`: the
        branches compute in bf16 whatever the rest of the graph computes in (see add_branches)."""
        apply = partial(add_branches, plan=self, bf16=bf16)
        key = f"lora {self.key}" + (" bf16" if bf16 else "")
        return GraphPass(key, REVISION, apply, frozenset({component}), devices=None)

    def tensors(self, updates: dict[str, list[Update]]) -> dict[str, np.ndarray]:
        """The branch inputs for `updates` ({path: the fitted updates of that layer}): zeros where a layer
        has none."""
        fed = {}
        for layer in self.layers:
            out, *inner = layer.shape
            down = np.zeros((self.rank, *inner), np.float32)
            up = np.zeros((out, self.rank), np.float32)
            start = 0
            for update in updates.get(layer.path, []):
                down[start : start + update.rank] = update.down
                up[:, start : start + update.rank] = update.up * np.float32(update.scale)
                start += update.rank
            fed[down_name(layer.path)] = down
            fed[up_name(layer.path)] = up if layer.kind == "linear" else up[:, :, None, None]
        return fed


def down_name(path: str) -> str:
    return f"lora_down.{path}"


def up_name(path: str) -> str:
    return f"lora_up.{path}"


def fit(update: Update, layer: Layer, where: str, scale: float = 1.0) -> Update:
    """`update` shaped for `layer` (a convolution's down as a kernel), its scale times `scale` (the
    LoRA's); SdcpuError where it does not fit."""
    out, *inner = layer.shape
    size = int(np.prod(inner))
    if update.up.shape[0] != out or update.down[0].size != size:
        given = f"{update.up.shape[0]}x{update.down[0].size}"
        raise SdcpuError(
            f"{where} does not fit this model: its layer {layer.path} is {given} in the LoRA and {out}x{size} "
            "here; is it for another family (SD 1.x, SD 2.x or SDXL)?"
        )
    down = update.down.reshape(update.rank, *inner).astype(np.float32, copy=False)  # a view where it can
    return Update(down, update.up, update.scale * scale)


def add_branches(model: Any, plan: BranchPlan, bf16: bool = False) -> int:
    """Add the plan's branches to an `openvino.Model` with static shapes; returns the layers changed.
    `bf16`: the branches' matrix products take bf16 inputs, so that the CPU plugin runs them in bf16 (on
    AMX) even in a graph compiled at f32. A rank-32 LoRA on every attention layer of SD 1.5's int8-hybrid
    UNet, computed at f32 (the int8-hybrid rule on CPUs with AMX, runtime/precision.py): the branches
    take 388 ms of a 3.95 s call in f32, 135 ms of 3.83 s in bf16 (Intel Xeon with AMX, 2 cores)."""
    import openvino as ov
    import openvino.opset13 as ops

    nodes = graph_layers(model)
    parameters = []
    changed = 0
    for layer in plan.layers:
        out, *inner = layer.shape
        down = ops.parameter([plan.rank, *inner], ov.Type.f32, name=down_name(layer.path))
        kernel = [1, 1] if layer.kind == "conv" else []  # up is a 1x1 convolution beside a convolution
        up = ops.parameter([out, plan.rank, *kernel], ov.Type.f32, name=up_name(layer.path))
        for param in (down, up):
            param.output(0).get_tensor().set_names({param.get_friendly_name()})
        parameters += [down, up]
        for node in nodes.get(layer.path, []):
            if describe(layer.path, node) != layer:
                raise SdcpuError(f"the graph's layer {layer.path} changed shape; load the model again")
            _branch(ops, node, down, up, f"lora/{layer.path}", ov.Type.bf16 if bf16 else None)
            changed += 1
    model.add_parameters(parameters)
    model.validate_nodes_and_infer_types()
    return changed


def _branch(ops: Any, node: Any, down: Any, up: Any, name: str, cast: Any) -> None:
    x = node.input_value(0)
    if x.get_node().get_type_name() == "FakeQuantize":  # int8-hybrid: the branch reads float activations
        x = x.get_node().input_value(0)
    dtype = x.get_element_type()
    if cast is not None:
        x, down, up = (ops.convert(value, cast) for value in (x, down, up))
    if node.get_type_name() == "Convolution":
        a = node.get_attributes()
        h = ops.convolution(x, down, a["strides"], a["pads_begin"], a["pads_end"], a["dilations"], a["auto_pad"])
        delta = ops.convolution(h, up, [1, 1], [0, 0], [0, 0], [1, 1])
    else:
        h = ops.matmul(x, down, False, True)
        delta = ops.matmul(h, up, False, True)
    if cast is not None:
        delta = ops.convert(delta, dtype)
    y = node.output(0)
    consumers = list(y.get_target_inputs())
    if len(consumers) == 1 and _adds_a_bias(consumers[0].get_node()):  # after the bias: its fusion stays
        y = consumers[0].get_node().output(0)
        consumers = list(y.get_target_inputs())
    total = ops.add(y, delta)
    for op, part in ((h, "down"), (delta, "up"), (total, "add")):
        op.set_friendly_name(f"{name}/{part}")
    for target in consumers:
        target.replace_source_output(total.output(0))


def _adds_a_bias(node: Any) -> bool:
    if node.get_type_name() != "Add":
        return False
    for i in range(2):
        source = node.input_value(i).get_node()
        while source.get_type_name() in ("Convert", "Reshape", "Unsqueeze"):
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":
            return True
    return False
