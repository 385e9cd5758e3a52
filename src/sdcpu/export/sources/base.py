"""What every source of a checkpoint yields (`Source`): configs, a tokenizer folder, and a loader that
builds one torch component at a time (so only one is in memory while it is exported)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json


@dataclass(frozen=True)
class Source:
    description: str
    family: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    tokenizer_dir: Path
    load: Callable[[str], Any]  # "text_encoder" | "unet" | "vae" -> torch module in eval mode
    optional: dict[str, Callable[[], Any]] = field(default_factory=dict)  # other models given (tiny_vae)
    # A task's other configs, copied as they are (the upscaler's low_res_scheduler), by path in the folder,
    # and its pipeline's own settings from model_index.json (the upscaler's max_noise_level).
    support_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline_options: dict[str, Any] = field(default_factory=dict)
    # Families with more than one tokenizer: the others' folders, by the name of their folder (tokenizer_2).
    more_tokenizers: dict[str, Path] = field(default_factory=dict)

    def tokenizers(self) -> dict[str, Path]:
        """Every tokenizer folder, by the name it has in a diffusers folder."""
        return {"tokenizer": self.tokenizer_dir} | self.more_tokenizers


def read_config(path: Path) -> dict[str, Any]:
    """A JSON config file as a dict; raises SdcpuError naming the file when it is not one."""
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SdcpuError(f"cannot read {path}: {err}; the folder is damaged") from None
    if not isinstance(data, dict):
        raise SdcpuError(f"{path} is not a JSON object; the folder is damaged")
    return data
