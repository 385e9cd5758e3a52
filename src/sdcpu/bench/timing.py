"""A timed stand-in for a network: the pipeline's own objects are wrapped, its loop left unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed_images(generate: Callable[[int], Any], runs: int, warm_up: Callable[[], Any] | None = None) -> list[float]:
    """Seconds of `generate(seed)` for seeds 1 to `runs`, after a first image that is not timed (compilation
    and first-call costs): `warm_up()`, by default `generate(0)`."""
    warm_up() if warm_up is not None else generate(0)
    times = []
    for seed in range(1, runs + 1):
        start = time.perf_counter()
        generate(seed)
        times.append(time.perf_counter() - start)
    return times


class Timed:
    """Calls the wrapped callable (an sdcpu model, or a torch module's `forward`) and records the wall
    time of every call in `seconds`."""

    def __init__(self, model: Any):
        self.model = model
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **inputs: Any) -> Any:
        return self._timed(self.model, args, inputs)

    def outputs(self, **inputs: Any) -> Any:  # an sdcpu model's every output
        return self._timed(self.model.outputs, (), inputs)

    def _timed(self, call: Any, args: tuple, inputs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        out = call(*args, **inputs)
        self.seconds.append(time.perf_counter() - start)
        return out

    @property
    def compute_precision(self) -> str | None:  # what an sdcpu model computed in
        return getattr(self.model, "compute_precision", None)

    def adapt(self, branches: Any, tensors: Any) -> None:  # an sdcpu model's LoRA branches
        self.model.adapt(branches, tensors)

    def extend(self, graph_pass: Any) -> None:  # an sdcpu model's ControlNet inputs
        self.model.extend(graph_pass)

    def release_memory(self) -> None:  # an sdcpu model's buffers, freed between phases
        self.model.release_memory()

    def release(self) -> None:
        self.model.release()
