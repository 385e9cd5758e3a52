"""The graph pass that gives a UNet ControlNet's residual inputs, on any converted UNet.

diffusers' UNet2DConditionModel adds ControlNet's residuals to the skip connections it hands from its
down blocks to its up blocks, and to its middle block's output (`down_block_additional_residuals`,
`mid_block_additional_residual`). Each skip tensor reaches the up blocks through one concatenation,
`torch.cat([hidden_states, skip], dim=1)` in every up block's resnet, taken in the reverse order of the
skips: so adding residual i to the second input of the (N-1-i)-th of those concatenations, and the middle
residual to the first input of the first, is diffusers' sum, leaving the down path itself unchanged.

The concatenations are found by the names that tracing gives them (`up_blocks.<n>/...Concat`, from PyTorch
through OpenVINO or ONNX), so the UNets of sdcpu, optimum-intel and optimum all take ControlNet without a
new export, and a UNet without a ControlNet compiles without these inputs and runs as fast as before.
"""

from __future__ import annotations

import re
from typing import Any

from sdcpu.errors import SdcpuError

REVISION = 1
UP_BLOCK = re.compile(r"(?:^|[./])up_blocks\.\d+/")


def down_name(i: int) -> str:
    return f"down_block_additional_residual_{i}"


MID_NAME = "mid_block_additional_residual"


def skip_concatenations(model: Any) -> list[Any]:
    """The up blocks' concatenations of a hidden state with a skip connection, in the graph's order."""
    found = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Concat" or len(op.inputs()) != 2 or not UP_BLOCK.search(op.get_friendly_name()):
            continue
        if op.get_output_partial_shape(0).rank.get_length() == 4 and op.get_axis() in (1, -3):
            found.append(op)
    return found


def add_residual_inputs(model: Any, channels: list[int], half: bool = False) -> int:
    """Add the inputs `down_block_additional_residual_<i>` and `mid_block_additional_residual` to the UNet
    `model` (an openvino.Model), `channels` wide (the ControlNet's residuals, the middle one last); returns
    the number of nodes added. `half`: the inputs are float16, for a UNet computing in bf16 or f16, which
    rounds them as much anyway: half the bytes to copy, convert and reorder (an SD 1.5 UNet call at
    512x512 took 1.81 s against 1.89 s fed float32, bf16, Intel Xeon with AMX, 2 cores). SdcpuError when the
    UNet's skips do not match them."""
    from openvino import opset13 as ops

    concats = skip_concatenations(model)
    down = len(channels) - 1
    widths = [int(c.input_value(1).get_partial_shape()[1].get_length()) for c in reversed(concats)]
    mid = int(concats[0].input_value(0).get_partial_shape()[1].get_length()) if concats else -1
    if len(concats) != down or widths != channels[:down] or mid != channels[-1]:
        raise SdcpuError(
            f"this ControlNet gives {down} skip residuals {channels[:down]} wide; the model's UNet has "
            f"{len(concats)} {widths} wide: it is for another model family"
        )
    added = []
    for k, concat in enumerate(concats):
        added.append(_add_input(ops, concat.input(1), down_name(down - 1 - k), half))
    added.append(_add_input(ops, concats[0].input(0), MID_NAME, half))
    model.add_parameters(added)
    model.validate_nodes_and_infer_types()
    return 2 * len(added)


def _add_input(ops: Any, port: Any, name: str, half: bool) -> Any:
    # port <- source + a new input of the source's shape (float16 converted to the source's type where `half`)
    from openvino import Type

    source = port.get_source_output()
    parameter = ops.parameter(source.get_partial_shape(), Type.f16 if half else source.get_element_type(), name=name)
    parameter.output(0).get_tensor().set_names({name})
    residual = ops.convert(parameter, source.get_element_type()) if half else parameter
    port.replace_source_output(ops.add(source, residual).output(0))
    return parameter
