"""sdcpu: Stable Diffusion on the CPU with a torch-free runtime (numpy + OpenVINO or ONNX Runtime)."""

from typing import Any

from sdcpu.version import __version__

__all__ = ["LoadOptions", "Pipeline", "PipelineResult", "SdcpuError", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import sdcpu.export` or `sdcpu --help` do not load the inference engines.
    if name in ("Pipeline", "PipelineResult"):
        from sdcpu.runtime import pipelines as pipeline

        return getattr(pipeline, name)
    if name == "LoadOptions":
        from sdcpu.runtime.options import LoadOptions

        return LoadOptions
    if name == "SdcpuError":
        from sdcpu.errors import SdcpuError

        return SdcpuError
    raise AttributeError(name)
