"""What a generation records of how it ran: the load options as resolved and each network's precision."""

from __future__ import annotations

from typing import Protocol

from sdcpu.format.manifest import Manifest
from sdcpu.runtime import precision as compute
from sdcpu.runtime.engines import Model
from sdcpu.runtime.memory import MemoryPolicy
from sdcpu.runtime.options import LoadOptions


class Ran(Protocol):
    """What a pipeline tells of how it runs."""

    options: LoadOptions
    requested: LoadOptions
    memory: MemoryPolicy
    manifest: Manifest
    model_hash: str
    applied: dict[str, list[str]]
    fell_back: list[str]

    def networks(self) -> dict[str, Model | None]: ...


def runtime_info(pipe: Ran) -> dict[str, str]:
    """How the networks ran: the load options as resolved (backend, device with its name, memory
    policy, graph passes) and the compute precision each network was compiled for (as the engine
    reports it) next to the one asked for."""
    networks = pipe.networks()
    ran = {name: m.compute_precision for name, m in networks.items() if m is not None and m.compute_precision}
    kinds = set(ran.values())
    o = pipe.options
    return o.record() | {
        "device": f"{o.device} ({compute.device_name(str(o.backend), o.device)})",
        "compute_precision": kinds.pop() if len(kinds) == 1 else ", ".join(f"{k}={v}" for k, v in ran.items()),
        "compute_precision_requested": pipe.requested.compute_precision,
        "memory": pipe.memory.name,
        "graph_passes": "; ".join(f"{c}: {', '.join(keys)}" for c, keys in pipe.applied.items() if keys),
        "model_source": pipe.manifest.source,
        "model_hash": pipe.model_hash,
        "fell_back_to_f32": ", ".join(pipe.fell_back),
    }
