"""A word-level vocabulary for the demo world, written in CLIP's tokenizer format.

Each word becomes one token through BPE merges, so the same files work with sdcpu's tokenizer and
with transformers' CLIPTokenizer, and the model's token length and vocabulary come from the files
(not CLIP's 77 tokens and 49k words).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding as CLIP applies it: merge the lowest-ranked adjacent pair until none is left."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(zip(symbols, symbols[1:], strict=False))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def build_merges(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges in which every word encodes to exactly one token.

    Each word is first encoded with the merges so far; whatever pieces remain are joined left to right
    by new, lower-priority merges. Words done earlier keep their single token: new merges rank after
    every merge they used."""
    vocab: dict[str, int] = {}
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for symbol in [*word[:-1], word[-1] + "</w>"]:
            vocab.setdefault(symbol, len(vocab))
    for word in words:
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        merged = pieces[0]
        for piece in pieces[1:]:
            ranks.setdefault((merged, piece), len(ranks))
            merged += piece
            vocab.setdefault(merged, len(vocab))
    for special in SPECIALS:
        vocab.setdefault(special, len(vocab))
    return vocab, sorted(ranks, key=ranks.__getitem__)


def write_tokenizer(folder: Path, words: list[str], max_length: int) -> None:
    vocab, merges = build_merges(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "model_max_length": max_length,
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "pad_token": SPECIALS[1],
        "unk_token": SPECIALS[1],
        "tokenizer_class": "CLIPTokenizer",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
