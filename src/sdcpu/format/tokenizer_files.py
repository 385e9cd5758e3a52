"""The files of a CLIP tokenizer folder as diffusers and transformers save it (torch-free, read by export,
the foreign-folder reader and the runtime's tokenizer)."""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def has_vocabulary(folder: Path) -> bool:
    """Whether `folder` holds a BPE vocabulary: vocab.json with merges.txt, or tokenizer.json."""
    return ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()) or (
        folder / "tokenizer.json"
    ).is_file()
