"""Shared rows: what a classifier-free guided batch computes twice, computed once.

A guided UNet call is one batch of [unconditional, conditional] rows (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598, eps = eps_u + w (eps_c - eps_u)). The two halves differ only in the
prompt's inputs: the sample, the timestep and the task's own inputs (a ControlNet's control image, the
upscaler's noise level) are the same rows twice. So every node that reads those inputs alone computes
each of its results twice. In SD 1.x's UNet these are the time embedding and each ResNet's projection
of it, conv_in, the first ResNet, and the first transformer block up to its cross-attention: its
self-attention over 4096 tokens at 512x512. In a ControlNet they also include the hint encoder, eight
convolutions from the control image's size down to the latents'.

Where it pays (docs/speed.md, SD 1.5's architecture at 512x512, bf16): a ControlNet call takes 13% less
time, so ControlNet's guided batch is fed this way (runtime/controlnet/hook.py). A UNet call took no
less: its shared part is about 3% of the call's operations (OpenVINO's profile), which the repeated
results' copies and the smaller batch's kernels cancel. The UNet is fed whole.

This rewrite is made after the graph is reshaped to the call's static shapes (the whole batch's). It
gives the shared inputs half the rows, computes that part of the graph on them, and repeats each of
its results (a concatenation along the batch) where a node outside that part reads it. It is exact:
each row goes through the same operations as before.

Which nodes are shared: in graph order, a node is shared when it reads at least one shared result,
reads nothing computed from another per-row input (the prompt's), and is of a kind known to keep
rows apart with the axes it is given (`_keeps_rows`). Any other node reads the repeated results. Shape
arithmetic on static shapes is folded first (integers only: weights are left as stored), so that the
shared part's reshapes have constant targets, which are given half the rows. Afterwards every shared
node's output must be its old shape with half the rows, and every other node's must be unchanged;
otherwise NotShareable is raised, and the caller compiles the graph as read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openvino as ov
import openvino.opset13 as ops

REVISION = 1  # in the key of cached compiled models: raise it whenever the rewritten graph changes

# fmt: off
ELEMENTWISE = frozenset({  # ops computing each element apart (numpy broadcasting is checked by shapes)
    "Abs", "Add", "Ceiling", "Clamp", "Convert", "Cos", "Divide", "Elu", "Erf", "Exp", "FakeQuantize", "Floor",
    "Gelu", "HSigmoid", "HSwish", "Log", "Maximum", "Minimum", "Mish", "Multiply", "Negative", "Power",
    "PRelu", "Relu", "Select", "Sigmoid", "Sign", "Sin", "SoftPlus", "Sqrt", "SquaredDifference", "Subtract",
    "Swish", "Tanh",
})
# fmt: on
FIRST_INPUT_ONLY = frozenset({"Convolution", "GroupConvolution", "GroupNormalization", "AvgPool", "MaxPool"})
SHARED, PER_ROW, FIXED = "shared", "per-row", "fixed"  # a node's rows: half, the whole batch's, none
SHAPE_OPS_LIMIT = 64  # integer constants up to this many values are folded with the shape arithmetic


class NotShareable(Exception):
    """The graph has nothing to share, or a node this rewrite does not understand reads shared rows."""


def share_rows(model: ov.Model, names: Sequence[str]) -> int:
    """Compute the part of `model` (static shapes) that reads only the inputs `names` on the first half of
    their rows, in place. Returns the number of shared nodes; NotShareable when the graph is left as it
    was (nothing to share), or when it was changed and must be read again (a node checked wrongly)."""
    rows = _rows(model, names)
    _fold_shapes(model)
    model.validate_nodes_and_infer_types()
    if not all(out.get_partial_shape().is_static for op in model.get_ops() for out in op.outputs()):
        raise NotShareable("the graph has shapes known only when it runs")
    kinds = _kinds(model, names, rows)
    shared = [op for op in model.get_ordered_ops() if kinds.get(op.get_name()) == SHARED]
    if not any(op.get_type_name() != "Parameter" for op in shared):
        raise NotShareable("no node reads the shared inputs alone")
    before = {
        op.get_name(): [tuple(out.get_partial_shape().to_shape()) for out in op.outputs()] for op in model.get_ops()
    }
    for op in shared:
        _repeat_for_others(op, kinds)
        if op.get_type_name() in ("Reshape", "Broadcast"):
            target = op.input_value(1).get_node().get_vector().copy()
            if target[0] > 0:  # -1, and 0 with special_zero, follow the input's rows
                target[0] //= 2
            op.input(1).replace_source_output(ops.constant(target).output(0))
        elif op.get_type_name() == "Parameter":
            op.set_partial_shape(ov.PartialShape([rows // 2, *op.get_output_partial_shape(0).to_shape()[1:]]))
    try:
        model.validate_nodes_and_infer_types()
    except RuntimeError as err:
        raise NotShareable(f"the rewritten graph does not validate: {err}") from err
    _check_shapes(model, before, kinds)
    return len(shared)


def _rows(model: ov.Model, names: Sequence[str]) -> int:
    """The batch's rows: the shared inputs' first dimension, which must be the same and even."""
    shapes = [port.get_partial_shape() for port in model.inputs if port.get_names() & set(names)]
    if not all(shape.is_static for shape in shapes):
        raise NotShareable(f"the inputs {', '.join(names)} have no static shapes")
    found = {int(shape[0].get_length()) for shape in shapes if shape.rank.get_length() > 0}
    if len(found) != 1 or next(iter(found)) % 2:
        raise NotShareable(f"the inputs {', '.join(names)} have no common even number of rows: {sorted(found)}")
    return found.pop()


def _fold_shapes(model: ov.Model) -> int:
    """Replace integer shape arithmetic on static shapes (ShapeOf and what computes on its values) by
    constants, so that reshapes have constant targets. Float nodes are never folded: a weight kept as
    fp16 or int8 stays so (OpenVINO's ConstantFolding would store it as f32)."""
    known: dict[str, np.ndarray] = {}
    for op in model.get_ordered_ops():
        if op.get_output_size() != 1 or not op.get_output_element_type(0).is_integral():
            continue
        kind, dtype = op.get_type_name(), op.get_output_element_type(0).to_dtype()
        if kind == "ShapeOf" and op.get_input_partial_shape(0).is_static:
            known[op.get_name()] = np.array(list(op.get_input_shape(0)), dtype)
        elif kind == "Constant" and int(np.prod(list(op.get_output_shape(0)))) <= SHAPE_OPS_LIMIT:
            known[op.get_name()] = op.get_data().reshape(list(op.get_output_shape(0)))
        elif op.get_output_partial_shape(0).is_static and all(
            v.get_node().get_name() in known for v in op.input_values()
        ):
            values = [known[v.get_node().get_name()] for v in op.input_values()]
            inputs = [
                ov.Tensor(np.ascontiguousarray(v.reshape(list(op.get_input_shape(i))))) for i, v in enumerate(values)
            ]
            result = ov.Tensor(op.get_output_element_type(0), op.get_output_shape(0))
            try:
                if op.evaluate([result], inputs):
                    known[op.get_name()] = result.data.copy().reshape(list(op.get_output_shape(0)))
            except RuntimeError:  # an operation OpenVINO cannot evaluate here stays in the graph
                continue
    folded = 0
    for op in model.get_ordered_ops():
        if op.get_name() in known and op.get_type_name() != "Constant":
            constant = ops.constant(known[op.get_name()]).output(0)
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(constant)
            folded += 1
    return folded


def _kinds(model: ov.Model, names: Sequence[str], rows: int) -> dict[str, str]:
    """Each node's rows, in graph order: SHARED, PER_ROW or FIXED (constants and what computes on them)."""
    kinds: dict[str, str] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Parameter":
            shape = op.get_output_partial_shape(0)
            batched = shape.rank.get_length() > 0 and shape[0].get_length() == rows
            shared = bool(op.output(0).get_names() & set(names))
            kinds[op.get_name()] = (SHARED if shared else PER_ROW) if batched else FIXED
            continue
        if kind == "Constant":
            kinds[op.get_name()] = FIXED
            continue
        read = [kinds.get(value.get_node().get_name(), PER_ROW) for value in op.input_values()]
        if PER_ROW in read or kind == "Result":
            kinds[op.get_name()] = PER_ROW
        elif SHARED in read:
            ports = [i for i, k in enumerate(read) if k == SHARED]
            kinds[op.get_name()] = SHARED if _keeps_rows(op, ports, rows) else PER_ROW
        else:
            kinds[op.get_name()] = FIXED
    return kinds


def _keeps_rows(op: ov.Node, ports: list[int], rows: int) -> bool:
    """Whether `op`, given shared results at its inputs `ports`, computes each of the batch's `rows` apart
    and leaves them first: its output's first dimension a multiple of `rows`, each row a block of it."""
    kind, attributes = op.get_type_name(), op.get_attributes()
    rank = op.get_input_partial_shape(ports[0]).rank.get_length()
    if kind in ELEMENTWISE or kind == "ScaledDotProductAttention":
        return kind != "FakeQuantize" or ports == [0]
    if kind in FIRST_INPUT_ONLY:
        return ports == [0]
    if kind == "MatMul":  # the rows must stay a batch dimension, never a contracted one
        return all(op.get_input_partial_shape(p).rank.get_length() >= 3 for p in ports) or (
            ports == [0] and rank == 2 and not attributes["transpose_a"]
        )
    if kind in ("Concat", "Softmax", "LogSoftmax"):
        return _normal(attributes["axis"], op.get_output_partial_shape(0).rank.get_length()) != 0
    axes = {
        "Transpose": 1,
        "Unsqueeze": 1,
        "Squeeze": 1,
        "MVN": 1,
        "Gather": 2,
        "Slice": 4,
        "Split": 1,
        "VariadicSplit": 1,
        "Reshape": 1,
        "Broadcast": 1,
    }
    if kind not in axes or ports != [0] or op.get_input_size() <= axes[kind]:
        return False
    source = op.input_value(axes[kind]).get_node()
    if source.get_type_name() != "Constant":
        return False
    values = [int(v) for v in np.atleast_1d(source.get_data())]
    if kind == "Transpose":
        return values[0] == 0
    if kind in ("Reshape", "Broadcast"):  # row-major: each row stays a block when the first dimension is a multiple
        first = int(op.get_output_partial_shape(0)[0].get_length())
        follows = values[0] == -1 or (values[0] == 0 and attributes.get("special_zero", False))
        if kind == "Broadcast":  # and not along the rows
            return first % rows == 0 and len(values) == rank and op.get_input_partial_shape(0)[0].get_length() == first
        return first % rows == 0 and (follows or values[0] == first)
    if kind == "Gather" and attributes.get("batch_dims", 0) != 0:
        return False
    out_rank = op.get_output_partial_shape(0).rank.get_length()
    return all(_normal(a, out_rank if kind == "Unsqueeze" else rank) != 0 for a in values)


def _normal(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _repeat_for_others(op: ov.Node, kinds: dict[str, str]) -> None:
    """Give the nodes outside the shared part that read `op` its results repeated: [rows, rows]."""
    for output in op.outputs():
        others = [t for t in output.get_target_inputs() if kinds.get(t.get_node().get_name()) != SHARED]
        if others:
            repeated = ops.concat([output, output], 0).output(0)
            for target in others:
                target.replace_source_output(repeated)


def _check_shapes(model: ov.Model, before: dict[str, list[tuple[int, ...]]], kinds: dict[str, str]) -> None:
    for op in model.get_ops():
        old = before.get(op.get_name())
        if old is None:  # a repeating concatenation this rewrite added
            continue
        new = [tuple(out.get_partial_shape().to_shape()) for out in op.outputs()]
        if kinds.get(op.get_name()) == SHARED:
            old = [(shape[0] // 2, *shape[1:]) if shape else shape for shape in old]
        if new != old:
            raise NotShareable(f"{op.get_type_name()} {op.get_friendly_name()} is {new} after the rewrite, not {old}")
