"""Compute precision: the arithmetic the networks run in, apart from how their weights are stored
(`convert --precision`). An int8 folder still computes in f32 or bf16.

OpenVINO's CPU plugin computes in bf16 by default on CPUs with native bf16 (AVX512_BF16 or AMX) and in
f32 elsewhere, so the same folder gives different pixels on different machines unless the precision is
chosen. sdcpu always chooses it, sets it as INFERENCE_PRECISION_HINT, and records what ran:

- `f32`: every CPU; the precision all parity tests pin.
- `bf16`: CPUs with native bf16 only (refused elsewhere, where OpenVINO would emulate or ignore it);
  OpenVINO only (ONNX Runtime's CPU provider has no bf16 kernels for these graphs).
- `auto`: bf16 where the CPU has it natively, f32 elsewhere. bf16 was measured inside the int8
  quality bar on the demo oracle (docs/precisions.md: at most 2 points of accuracy below f32, mean
  SSIM >= 0.95 against f32), on an AVX-512 BF16 CPU; CPUs without it get f32, the only precision
  that runs at full speed there. ONNX Runtime: f32.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from sdcpu.errors import SdcpuError

COMPUTE_PRECISIONS = ("auto", "f32", "bf16")
# /proc/cpuinfo flag -> the name a user knows, for the ISA that decides sdcpu's speed.
ISA_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512_BF16",
    "avx512_vnni": "AVX512_VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on, as much as matters for speed and for the compute precision."""

    model: str
    cores: int
    isa: tuple[str, ...]  # names from ISA_FLAGS that the CPU has

    def describe(self) -> str:
        return f"{self.model}, {self.cores} cores, {' '.join(self.isa) or 'no AVX2'}"


@cache  # facts of the machine: read once per process
def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Read the CPU model and its ISA flags (Linux); elsewhere the model from `platform` alone."""
    fields: dict[str, str] = {}
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first core's
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:  # names the generation where the model name does not ("AMD EPYC")
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    return CpuInfo(model, os.cpu_count() or 1, tuple(name for flag, name in ISA_FLAGS.items() if flag in flags))


@cache
def openvino_capabilities(device: str) -> tuple[str, ...]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of `device` (BF16, FP32, INT8, ...); () when it is not there."""
    import openvino as ov

    try:
        return tuple(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    except (RuntimeError, TypeError):  # no such device (TypeError: a name that is not text to OpenVINO)
        return ()


@cache
def openvino_devices() -> tuple[str, ...]:
    """The devices OpenVINO finds on this machine (CPU, GPU, ...)."""
    import openvino as ov

    return tuple(ov.Core().available_devices)


@cache
def device_name(backend: str, device: str) -> str:
    """The name of what runs the networks: OpenVINO's FULL_DEVICE_NAME, or the CPU model."""
    if backend == "openvino":
        import openvino as ov

        try:
            return str(ov.Core().get_property(device, "FULL_DEVICE_NAME"))
        except RuntimeError:
            return device
    return cpu_info().model


def resolve(requested: str, backend: str, device: str, capabilities: tuple[str, ...]) -> str | None:
    """The precision to ask the engine for: "f32" or "bf16", or None (under "auto" on an OpenVINO device
    other than the CPU) for that device's own default. `capabilities`: the device's
    OPTIMIZATION_CAPABILITIES. Raises SdcpuError, saying what to use instead, for a precision this
    backend or device cannot run."""
    if requested not in COMPUTE_PRECISIONS:
        raise SdcpuError(f"unknown compute precision {requested!r}; choose one of: {', '.join(COMPUTE_PRECISIONS)}")
    native_bf16 = "BF16" in capabilities
    if backend != "openvino":
        if requested == "bf16":
            raise SdcpuError(
                f"the {backend} backend computes in f32 only; use --compute-precision f32 (or auto), "
                "or --backend openvino for bf16"
            )
        return "f32"
    if requested == "bf16" and not native_bf16:
        raise SdcpuError(
            "this device has no native bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16); "
            "use --compute-precision f32 or auto"
        )
    if requested == "auto":
        # A GPU picks its own (f16 on most); only the CPU plugin's choice was measured here.
        return ("bf16" if native_bf16 else "f32") if device.upper() == "CPU" else None
    return requested


# Stored precisions whose weights OpenVINO decompresses inside the graph (u8 or u4 with scales).
COMPRESSED = ("int8", "int8-hybrid", "int4")


def network_precision(component: str, stored: str, compute: str, cpu: CpuInfo | None = None) -> str:
    """The compute precision one network runs at, given the pipeline's: bf16 gives way to f32 where
    OpenVINO 2026.4's CPU plugin computes it wrongly (measured on an Intel Xeon with AMX, family 6,
    model 167; the AMD Zen 4 and Zen 5 measured in docs/quality.md were right):
    - a text encoder with compressed weights: the last row of its compressed embedding table is misread
      at bf16 (CLIP's last token, <|endoftext|>, which every prompt holds, came out wrong in 7 of 10
      compiles; on every CPU, since the misreading is a read past the table's end). A text encoder runs
      once per prompt: f32 costs little;
    - an int8-hybrid UNet on a CPU with AMX: 3.1% relative error per call against f32 (0.35% for the same
      UNet with float weights), which the demo's 20 steps compound to 8% of held-out captions right
      instead of 85%. Its quantized convolutions stay int8 at f32."""
    cpu = cpu or cpu_info()
    if compute != "bf16":
        return compute
    if component.startswith("text_encoder") and stored in COMPRESSED:
        return "f32"
    if component.startswith("unet") and stored == "int8-hybrid" and "AMX-BF16" in cpu.isa:
        return "f32"
    return compute


def int8_dot_products(cpu: CpuInfo) -> bool:
    """Whether the CPU multiplies int8 vectors natively (VNNI or AMX), where int8 activations pay."""
    return any(name in cpu.isa for name in ("AVX512_VNNI", "AVX-VNNI", "AMX-INT8"))


def resolve_int8_activations(requested: bool | None, backend: str, storage: str, cpu: CpuInfo | None = None) -> bool:
    """Whether MatMuls with int8 or int4 weights quantize their activations on the fly (OpenVINO's dynamic
    quantization). None: on for int8-hybrid folders (already int8 activations on the UNet's convolutions)
    on CPUs with int8 dot products, where it was measured to pay and to hold quality (docs/precisions.md)."""
    if requested and backend != "openvino":
        raise SdcpuError(f"int8 activations need --backend openvino; the {backend} backend computes in f32 only")
    if requested is None:
        return backend == "openvino" and storage == "int8-hybrid" and int8_dot_products(cpu or cpu_info())
    return requested


def system_report() -> dict[str, str]:
    """What this machine offers sdcpu: the CPU and its ISA, OpenVINO's view of it (capabilities and its
    own default precision) and what `auto` picks on each backend. For bug reports and CI logs."""
    import onnxruntime
    import openvino as ov

    core = ov.Core()
    capabilities = openvino_capabilities("CPU")
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    return {
        "cpu": cpu_info().describe(),
        "openvino": f"{ov.__version__}; devices {', '.join(core.available_devices)}",
        "openvino CPU capabilities": " ".join(capabilities),
        "openvino CPU default precision": default,
        "onnxruntime": onnxruntime.__version__,
        "auto compute precision": f"openvino {resolve('auto', 'openvino', 'CPU', capabilities)}, onnxruntime f32",
    }
