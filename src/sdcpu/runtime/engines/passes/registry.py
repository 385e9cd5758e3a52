"""Graph passes: rewrites of an OpenVINO graph made after it is reshaped to the call's static shapes and
before it is compiled. Each pass is a small named object that says which networks it applies to; the
pipeline picks them from its load options, and the OpenVINO backend runs, in order, those it is given.

A pass's name and revision are part of the key of the cached compiled model, so a changed pass (its
revision raised) or another set of passes never imports a blob compiled without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdcpu.runtime import precision

if TYPE_CHECKING:
    from sdcpu.runtime.options import LoadOptions

UNETS = frozenset({"unet", "unet_shallow"})


@dataclass(frozen=True)
class GraphPass:
    """`apply(model)` rewrites an `openvino.Model` with static shapes in place and returns how many
    nodes it changed. `components`: the networks it applies to; `precisions`: the storage precisions
    (per component, from the manifest) it applies to, None for all; `devices`: the OpenVINO devices
    whose kernels it answers to, None for all. `exact`: the output equals the unrewritten graph's within
    float rounding. `onnx_graph`: for ONNX Runtime, which cannot rewrite a graph, the file beside the
    network's own graph that has this rewrite made at convert (ControlNet's residual inputs)."""

    name: str
    revision: int
    apply: Callable[[Any], int]
    components: frozenset[str]
    precisions: frozenset[str] | None = None
    devices: frozenset[str] | None = frozenset({"CPU"})
    exact: bool = True
    onnx_graph: str | None = None

    def applies_to(self, component: str, precision: str, device: str) -> bool:
        """Whether this pass rewrites `component`, stored at `precision`, compiled for `device`."""
        return (
            component in self.components
            and (self.precisions is None or precision in self.precisions)
            and (self.devices is None or device.upper() in self.devices)
        )

    @property
    def key(self) -> str:
        return f"{self.name} r{self.revision}"


def winograd() -> GraphPass:
    """3x3 convolutions by Winograd's algorithm (passes/winograd.py): exact within float32 rounding,
    faster on the CPU at f32, larger filters. Not for the VAE decoder: faster there too (10.6 against
    14.8 s at 512x512) but it then holds 2.97 GB against 1.35 GB."""
    from sdcpu.runtime.engines.passes import winograd as algorithm

    return GraphPass("winograd", algorithm.REVISION, algorithm.rewrite_convolutions, UNETS)


def upsampling_convolutions() -> GraphPass:
    """Nearest 2x upsampling + 3x3 convolution as four 2x2 convolutions (passes/upsample_conv.py):
    exact within float rounding, 2.25x fewer multiplications in those convolutions."""
    from sdcpu.runtime.engines.passes import upsample_conv as algorithm

    rewrite, components = algorithm.rewrite_upsampling_convolutions, UNETS | {"vae_decoder", "tiny_vae_decoder"}
    return GraphPass("upsampling-convolutions", algorithm.REVISION, rewrite, components)


def token_downsampling(factor: int) -> GraphPass:
    """ToDo (passes/token_downsampling.py): approximate; changes the image."""
    from sdcpu.runtime.engines.passes import token_downsampling as algorithm

    def apply(model: Any) -> int:
        return algorithm.downsample_self_attention(model, factor)

    name = f"token-downsampling-{factor}"
    return GraphPass(name, algorithm.REVISION, apply, UNETS, devices=None, exact=False)


def chunked_attention() -> GraphPass:
    """Attention over slices of its queries (passes/chunked_attention.py), for the graphs with
    FakeQuantize nodes where OpenVINO's CPU plugin holds whole score matrices: the int8-hybrid UNet."""
    from sdcpu.runtime.engines.passes import chunked_attention as algorithm

    unet, quantized = frozenset({"unet"}), frozenset({"int8-hybrid"})
    return GraphPass("chunked-attention", algorithm.REVISION, algorithm.split_queries, unet, quantized)


def graph_passes(options: LoadOptions) -> tuple[GraphPass, ...]:
    """The passes for resolved load options, in the order they run (none but on OpenVINO). They need the
    static shapes (the upsampling's factor, Winograd's tile size, the picked tokens, the slices); chunked
    attention comes after token downsampling, which shrinks the score matrices."""
    if options.backend != "openvino":
        return ()
    # Winograd first: at f32 it computes an upsampling convolution faster still (SD 1.5's 640 channels,
    # 32x32 to 64x64, Zen 5: 26.8 ms against 29.2 ms as four 2x2 convolutions and 62.6 ms direct).
    passes = [winograd()] if options.winograd else []
    passes.append(upsampling_convolutions())
    passes += [token_downsampling(options.token_downsampling)] if options.token_downsampling > 1 else []
    # With AVX-512, OpenVINO's CPU plugin fuses attention into one kernel that never holds a whole score
    # matrix, so slices only cost time: an SD 1.5 int8-hybrid UNet call at 512x512 on a Zen 5 took 0.858 s
    # sliced against 0.834 s whole (bf16, medians of 12, alternating in one process), at the same peak memory.
    fused_attention = "AVX-512" in precision.cpu_info().isa
    return (*passes, *([] if fused_attention else [chunked_attention()]))
