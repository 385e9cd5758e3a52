"""A network computed in bf16 that computes again in f32 when its output holds NaN or Inf.

bf16 keeps f32's exponent range but only 8 bits of mantissa, so a network can still produce NaN where
f32 does not (a softmax over nearly equal large logits, a normalisation of a tiny variance). Rather
than fail the image, the failing call runs again at f32, and that network stays at f32 for the rest
of the pipeline's life; the switch is announced as a warning and recorded in the PNG metadata.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from sdcpu.runtime.engines.base import Input, Model


class RetryAtF32:
    """`f32()` opens the same network at f32; `fell_back(name)` is told when it is used."""

    def __init__(self, model: Model, f32: Callable[[], Model], name: str, fell_back: Callable[[str], None]):
        self.model, self._f32, self.name, self._told = model, f32, name, fell_back
        self.fell_back = False
        self._adapted: tuple[Any, dict[str, np.ndarray]] | None = None  # given to the f32 network too
        self._extended: list[Any] = []  # so are these

    @property
    def compute_precision(self) -> str | None:
        return self.model.compute_precision

    def __call__(self, **inputs: Input) -> np.ndarray:
        out = self.model(**inputs)
        if self.fell_back or np.isfinite(out).all():
            return out
        self._switch()
        return self.model(**inputs)

    def outputs(self, **inputs: Input) -> list[np.ndarray]:
        outs = self.model.outputs(**inputs)
        if self.fell_back or all(np.isfinite(o).all() for o in outs):
            return outs
        self._switch()
        return self.model.outputs(**inputs)

    def _switch(self) -> None:
        warnings.warn(f"the {self.name} gave NaN or Inf at bf16; it runs at f32 from now on", stacklevel=3)
        self.model.release()
        self.model, self.fell_back = self._f32(), True
        if self._adapted is not None:
            self.model.adapt(*self._adapted)
        for graph_pass in self._extended:
            self.model.extend(graph_pass)
        self._told(self.name)

    def adapt(self, branches: Any, tensors: dict[str, np.ndarray]) -> None:
        self._adapted = (branches, tensors)
        self.model.adapt(branches, tensors)

    def extend(self, graph_pass: Any) -> None:
        self._extended = [p for p in self._extended if p.name != graph_pass.name] + [graph_pass]
        self.model.extend(graph_pass)

    def release_memory(self) -> None:
        self.model.release_memory()

    def release(self) -> None:
        self.model.release()
