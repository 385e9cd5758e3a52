"""The torch-free CLIP tokenizer against transformers' CLIPTokenizer on the real vocabularies."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tiny

from sdcpu.runtime.components.tokenizer import ClipTokenizer

PROMPTS = [
    "A photo of an astronaut riding a horse on Mars, highly detailed, 8k!!",
    "Ünïcode café's déjà-vu   test.\n\tnew  line",
    "",
    "it's a dog's life, we'll see; 3.14 <|endoftext|> <|startoftext|>hi",
    "emoji 🐱🚀 日本語 ! ?",
    "word " * 100,
]


@pytest.mark.parametrize("model", ["stable-diffusion-v1-4", "stable-diffusion-2-1"])
@pytest.mark.parity
def test_matches_transformers(model):
    transformers = pytest.importorskip("transformers")
    folder = tiny.REFERENCE / model / "tokenizer"
    if not folder.exists():
        pytest.skip("reference configs not present")
    reference = transformers.CLIPTokenizer.from_pretrained(folder)
    expected = np.array(reference(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(ClipTokenizer(folder)(PROMPTS), expected)


def test_reads_length_and_pad_from_the_files(tmp_path):
    """A word-level toy vocabulary with its own length (6) and pad token: nothing about CLIP is assumed."""
    vocab = {
        "<|startoftext|>": 0,
        "<|endoftext|>": 1,
        "!": 2,
        "r": 3,
        "e": 4,
        "d</w>": 5,
        "re": 6,
        "red</w>": 7,
        "e</w>": 8,
    }
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 6, "pad_token": "!"}')
    tok = ClipTokenizer(tmp_path)
    assert tok(["Red  e"]).tolist() == [[0, 7, 8, 1, 2, 2]]
    with pytest.warns(UserWarning, match="2 were cut, from: 'red e'"):
        assert tok(["red red red e red e"]).tolist() == [[0, 7, 7, 7, 8, 1]]
    with pytest.warns(UserWarning) as caught:  # a long prompt's cut part is shown by its start, not whole
        tok(["red " * 10_000])
    assert "9996 were cut" in str(caught[0].message) and len(str(caught[0].message)) < 200


@pytest.mark.parity
def test_reads_tokenizer_json_alone_as_vocab_and_merges(tmp_path):
    pytest.importorskip("transformers")
    folder = tiny.REFERENCE / "stable-diffusion-v1-4" / "tokenizer"
    if not folder.exists():
        pytest.skip("reference configs not present")
    only_json = tiny.write_tokenizer_json_only(folder, tmp_path / "tokenizer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the over-long prompt's warning
        np.testing.assert_array_equal(ClipTokenizer(only_json)(PROMPTS), ClipTokenizer(folder)(PROMPTS))
