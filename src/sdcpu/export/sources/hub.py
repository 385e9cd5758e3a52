"""A Hugging Face hub id as a source: its diffusers folder, fetched (safetensors and configs only)."""

from __future__ import annotations

from pathlib import Path

from sdcpu.errors import SdcpuError


def download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    # Safetensors and configs only: we never fetch (or load) pickled weights from the hub.
    patterns = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many kinds; all mean "cannot get it"
        raise SdcpuError(f"cannot fetch {repo_id} from the Hugging Face hub: {err}") from err
