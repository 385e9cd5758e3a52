"""LoRAs at run time: read from their files (formats.py), matched to a graph's layers (layers.py), run as
low-rank branches beside those layers (branches.py), switched per generation (adapters.py)."""

from sdcpu.runtime.lora.setting import LoraSetting

__all__ = ["LoraSetting"]
