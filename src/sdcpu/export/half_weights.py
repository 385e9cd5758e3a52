"""Hold a torch model's large weights in float16 while it is exported, computing in float32.

SDXL's UNet is 10.3 GB in float32. Traced as it is, then compressed to int8 weights, both copies were held
at once: the convert peaked above 14 GB. Every precision but fp32 stores the weights in 16 bits or fewer
anyway, so rounding them to float16 first loses nothing that matters: 2^-11 of a weight, where int8's step
is about 1/255 of a channel's range, and fp16 rounds the same way itself.

Each large Linear and Conv2d weight is kept as a float16 tensor and cast to float32 where it is used, by a
torch parametrization (https://pytorch.org/tutorials/intermediate/parametrizations.html). The traced
graph then holds a float16 Constant followed by a Convert to float32: the pattern OpenVINO's own
`compress_to_fp16` writes, which NNCF compresses from and the CPU plugin reads as compressed weights.
Activations stay float32 throughout. OpenVINO only: the ONNX writers store float32 initializers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.utils import parametrize

MIN_ELEMENTS = 1024  # smaller weights (biases, norms, tiny layers) stay float32, as compress_to_fp16 leaves them


class _Upcast(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float()


def holds_half_weights(fmt: str, precision: str) -> bool:
    """Whether a convert to (fmt, precision) holds the torch weights in float16."""
    return fmt == "openvino" and precision != "fp32"


def hold_weights_in_fp16(model: Any) -> Any:
    """`model`, its Linear and Conv2d weights of at least MIN_ELEMENTS now stored in float16 (each freed
    from float32 as it goes, so the peak only falls) and read as float32."""
    for module in list(model.modules()):
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d) or parametrize.is_parametrized(module):
            continue
        if module.weight.dtype != torch.float32 or module.weight.numel() < MIN_ELEMENTS:
            continue
        parametrize.register_parametrization(module, "weight", _Upcast(), unsafe=True)
        parametrized: Any = module  # torch types `parametrizations` loosely
        original = parametrized.parametrizations.weight.original
        original.data = original.data.half()
    return model
