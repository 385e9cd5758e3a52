"""The demo world's oracle on hand-made images (right and wrong ones) and its tokenizer files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdcpu.demo import world as world
from sdcpu.demo.tokenizer import write_tokenizer
from sdcpu.runtime.components.tokenizer import ClipTokenizer


def test_oracle_accepts_every_exact_render():
    for scene in world.all_scenes()[::7]:
        assert world.score(scene, world.render(scene))["all"], scene


def test_oracle_accepts_jittered_renders():
    rng = np.random.default_rng(0)
    results = [world.score(s, world.render(s, rng))["all"] for s in world.all_scenes()[::5]]
    assert all(results)


@pytest.mark.parametrize("attribute", world.ATTRIBUTES)
def test_oracle_rejects_a_wrong_attribute(attribute):
    scene = world.Scene("circle", "red", "small", "left", "blue")
    alternatives = {
        "shape": "triangle",
        "colour": "yellow",
        "size": "large",
        "position": "right",
        "background": "white",
    }
    wrong = world.Scene(**{**scene.__dict__, attribute: alternatives[attribute]})
    result = world.score(scene, world.render(wrong))
    assert not result[attribute] and not result["all"]
    assert all(result[a] for a in world.ATTRIBUTES if a != attribute)


def test_oracle_on_blank_and_noise_images():
    blank = Image.new("RGB", (64, 64), world.COLOURS["green"])
    assert world.judge(blank) == {"background": "green", "shape": None, "colour": None, "size": None, "position": None}
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert not world.score(world.Scene("circle", "red", "small", "left", "blue"), noise)["all"]


def test_held_out_scenes_are_unseen():
    train, held_out = world.split_scenes()
    assert len(held_out) >= 200 and not set(train) & set(held_out)
    assert len(train) + len(held_out) == len(world.all_scenes())


def test_demo_tokenizer_gives_one_token_per_word(tmp_path):
    write_tokenizer(tmp_path, world.vocabulary(), 16)
    tokenizer = ClipTokenizer(tmp_path)
    assert tokenizer.config.max_length == 16
    caption = world.Scene("triangle", "orange", "large", "centre", "black").caption(2)
    ids = tokenizer([caption])[0]
    words = caption.replace(",", " ,").replace(";", " ;").split()
    assert int((ids != tokenizer.pad_id).sum()) == len(words) + 1  # + bos (eos is the pad token)
    inverse = {i: t for t, i in tokenizer.vocab.items()}
    assert [inverse[int(i)].removesuffix("</w>") for i in ids[1 : len(words) + 1]] == words
