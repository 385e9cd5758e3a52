"""Named OpenVINO graph rewrites (registry.py), one algorithm per module: Winograd convolutions,
upsampling convolutions, token downsampling, chunked attention."""

from sdcpu.runtime.engines.passes.registry import UNETS, GraphPass, graph_passes

__all__ = ["UNETS", "GraphPass", "graph_passes"]
