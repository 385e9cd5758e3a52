"""What a benchmark ran on, and what it took: the CPU and its ISA, and a process's peak memory."""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Any

from sdcpu.runtime.precision import cpu_info, openvino_capabilities


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (10^9 bytes, as folder sizes). On Linux, VmHWM:
    getrusage's ru_maxrss survives exec, so a worker started by a large parent would report at least
    the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(row for row in status.read_text().splitlines() if row.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024 / 1e9  # VmHWM is in KiB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9


def machine() -> dict[str, Any]:
    """The CPU model, its cores, the ISA that decides speed, and OpenVINO's view of the CPU
    (OPTIMIZATION_CAPABILITIES: BF16, INT8, ...)."""
    cpu = cpu_info()
    return {"cpu": cpu.model, "cores": cpu.cores, "isa": list(cpu.isa), "openvino": list(openvino_capabilities("CPU"))}


def machine_line() -> str:
    """The CPU by model, generation (family / model) and ISA, with the RAM and OS, as one line."""
    meminfo = Path("/proc/meminfo")
    memory = f", {int(meminfo.read_text().split()[1]) / 1024**2:.0f} GB RAM" if meminfo.exists() else ""
    return f"{cpu_info().describe()}{memory}, {platform.system()} {platform.release()}"
