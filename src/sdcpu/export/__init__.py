"""Checkpoint conversion (needs the `[export]` extra: torch, diffusers, transformers)."""

from sdcpu.export.convert import convert

__all__ = ["convert"]
