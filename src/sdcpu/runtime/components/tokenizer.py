"""CLIP's byte-level BPE tokenizer, rebuilt from a model folder's vocab.json and merges.txt, or from
tokenizer.json alone (as transformers 5 saves it).

It reproduces transformers' CLIPTokenizer (the `tokenizers` pipeline it uses) without transformers:
NFC + whitespace folding + lowercasing, CLIP's split regex, byte-level BPE with a `</w>` end-of-word
suffix, then `<|startoftext|> ... <|endoftext|>` padded to the model's length with its pad token.
The length and the vocabulary come from the tokenizer files, never assumed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from sdcpu.errors import SdcpuError
from sdcpu.format.json_bounds import read_json_object

# Every file a tokenizer folder may have; a converted folder keeps those its source had.
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

SHOWN_CUT = 80  # characters of a prompt's cut part shown in the warning (its first and last 40)


def _token_content(value: object) -> str:
    return value["content"] if isinstance(value, dict) else str(value)


@dataclass(frozen=True)
class TokenizerConfig:
    max_length: int
    bos_token: str
    eos_token: str
    pad_token: str
    unk_token: str

    @classmethod
    def load(cls, folder: Path) -> TokenizerConfig:
        config = read_json_object(folder / "tokenizer_config.json")
        special_path = folder / "special_tokens_map.json"
        special = read_json_object(special_path) if special_path.exists() else {}
        merged = {**config, **special}

        def token(name: str, default: str) -> str:
            return _token_content(merged.get(name) or default)

        return cls(
            max_length=int(config.get("model_max_length", 77)),
            bos_token=token("bos_token", "<|startoftext|>"),
            eos_token=token("eos_token", "<|endoftext|>"),
            pad_token=token("pad_token", "<|endoftext|>"),
            unk_token=token("unk_token", "<|endoftext|>"),
        )


class ClipTokenizer:
    """Turns prompts into fixed-length `input_ids` the way the text encoder was trained."""

    def __init__(self, folder: Path):
        try:
            self.config = TokenizerConfig.load(folder)
            vocab, merges = read_vocabulary(folder)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SdcpuError(f"cannot read the tokenizer in {folder}: {err!r}") from err
        self.vocab: dict[str, int] = vocab
        self._bpe = _build_bpe(vocab, merges, self.config.unk_token)
        # Special tokens typed in a prompt map to their ids, as in transformers (SD 2's pad token is "!").
        special = {self.config.bos_token, self.config.eos_token, self.config.pad_token}
        self._bpe.add_special_tokens([AddedToken(t, normalized=t == self.config.bos_token) for t in sorted(special)])
        self.bos_id = vocab[self.config.bos_token]
        self.eos_id = vocab[self.config.eos_token]
        self.pad_id = vocab[self.config.pad_token]

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """Token ids, shape (len(prompts), max_length), int64; over-long prompts are cut with a warning."""
        return np.stack([self._encode_one(p) for p in prompts]).astype(np.int64)

    def _encode_one(self, prompt: str) -> np.ndarray:
        n = self.config.max_length
        encoding = self._bpe.encode(prompt, add_special_tokens=False)
        ids = encoding.ids
        if len(ids) > n - 2:
            cut = prompt[encoding.offsets[n - 2][0] :].strip()
            half = SHOWN_CUT // 2  # its start and its end, not a 100 KB prompt's tail again
            shown = cut if len(cut) <= SHOWN_CUT else f"{cut[:half].rstrip()} ... {cut[-half:].lstrip()}"
            warnings.warn(
                f"the prompt is longer than the model's {n} tokens; {len(ids) - (n - 2)} were cut, from: {shown!r}",
                stacklevel=3,
            )
            ids = ids[: n - 2]
        row = [self.bos_id, *ids, self.eos_id]
        return np.array(row + [self.pad_id] * (n - len(row)), dtype=np.int64)


def read_vocabulary(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merges: from vocab.json + merges.txt where both exist (transformers 4), else
    from tokenizer.json's model (transformers 5 writes only that)."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = read_json_object(folder / "vocab.json")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        pairs = [line.split() for line in lines if line and not line.startswith("#version")]
        return vocab, [(a, b) for a, b in pairs]
    if not (folder / "tokenizer.json").is_file():
        raise SdcpuError(f"{folder} has no tokenizer: it needs vocab.json and merges.txt, or tokenizer.json")
    model = read_json_object(folder / "tokenizer.json").get("model") or {}
    if model.get("type") != "BPE":
        raise SdcpuError(f"{folder / 'tokenizer.json'} is a {model.get('type')} tokenizer; CLIP's is BPE")
    # Merges are ["a", "b"] pairs (tokenizers >= 0.20) or "a b" strings (older files).
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), [(a, b) for a, b in merges]


def _build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], unk: str) -> Tokenizer:
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, continuing_subword_prefix="", end_of_word_suffix="</w>")
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok
