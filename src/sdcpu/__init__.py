"""sdcpu: Stable Diffusion on the CPU with a torch-free runtime (numpy + OpenVINO or ONNX Runtime)."""

from typing import Any

__all__ = ["Pipeline", "PipelineResult", "SdcpuError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported lazily so that `import sdcpu.export` or `sdcpu --help` do not load the inference engines.
    if name in ("Pipeline", "PipelineResult"):
        from sdcpu.runtime import pipeline

        return getattr(pipeline, name)
    if name == "SdcpuError":
        from sdcpu.runtime.errors import SdcpuError

        return SdcpuError
    raise AttributeError(name)
