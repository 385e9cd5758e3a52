"""A Hugging Face hub id as a source: its diffusers folder, fetched (safetensors and configs only).

The configs come first (`model_index.json`, the UNet's, and a lone model's `config.json`): a family sdcpu
cannot convert is refused before gigabytes of its weights are fetched, and a ControlNet repository
(`lllyasviel/control_v11p_sd15_canny`) or a depth estimator's (`Intel/dpt-hybrid-midas`) fetches its one
model's weights, not a pipeline's.
"""

from __future__ import annotations

from pathlib import Path

from sdcpu.errors import SdcpuError
from sdcpu.export.controlnet_sources import FP16_WEIGHTS, WEIGHTS, is_controlnet_folder
from sdcpu.export.depth_estimator import PROCESSOR, is_depth_estimator_folder
from sdcpu.export.depth_estimator import WEIGHTS as DEPTH_WEIGHTS
from sdcpu.export.families import export_family
from sdcpu.export.sources.base import read_config
from sdcpu.format.families import family_of

FAMILY_FILES = ["model_index.json", "unet/config.json", "config.json"]
# Safetensors and configs only: we never fetch (or load) pickled weights from the hub.
PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer*/*", "*.safetensors"]


def download(repo_id: str) -> Path:
    """The diffusers folder of `repo_id`, from the hub or its local cache; SdcpuError if it cannot be had."""
    configs = _snapshot(repo_id, FAMILY_FILES)
    if is_controlnet_folder(configs):
        return _controlnet(repo_id)
    if is_depth_estimator_folder(configs):
        folder = _snapshot(repo_id, ["config.json", PROCESSOR, DEPTH_WEIGHTS])
        if not (folder / DEPTH_WEIGHTS).is_file():
            raise SdcpuError(f"{repo_id} has no {DEPTH_WEIGHTS}; sdcpu never loads pickled weights (.bin, .pth)")
        return folder
    unet, index = configs / "unet" / "config.json", configs / "model_index.json"
    export_family(family_of(read_config(unet) if unet.is_file() else {}, read_config(index) if index.is_file() else {}))
    return _snapshot(repo_id, PATTERNS)


def _controlnet(repo_id: str) -> Path:
    # Its full-precision weights, or the fp16 variant where that is all it has; never a pickle.
    for weights in (WEIGHTS, FP16_WEIGHTS):
        folder = _snapshot(repo_id, ["config.json", weights])
        if (folder / weights).is_file():
            return folder
    raise SdcpuError(
        f"{repo_id} is a ControlNet without {WEIGHTS} or {FP16_WEIGHTS}; sdcpu never loads pickled weights "
        "(.bin, .pth): get a .safetensors version of it"
    )


def _snapshot(repo_id: str, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many kinds; all mean "cannot get it"
        raise SdcpuError(f"cannot fetch {repo_id} from the Hugging Face hub: {err}") from err
