"""A1111's `parameters` chunk: written in its layout, read back (ours and A1111's own), and
`generate --from-png` running an image's settings again to the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sdcpu.cli.main import app
from sdcpu.errors import SdcpuError
from sdcpu.runtime.io.infotext import SAMPLERS, format_parameters, parse_parameters, quote
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline

runner = CliRunner()
SETTINGS = dict(prompt="a cat, sitting: on a mat\nsecond line", negative_prompt="blurry, dark", steps=20)
SETTINGS |= dict(guidance=7.5, seed=42, width=512, height=768, num_images=1, image_index=0, strength=None)


def test_quoting_is_a1111s():
    assert quote("plain") == "plain" and quote("a, b") == '"a, b"' and quote("x: y") == '"x: y"'


@pytest.mark.parametrize("scheduler", list(SAMPLERS))
def test_every_scheduler_round_trips(scheduler):
    text = format_parameters({**SETTINGS, "scheduler": scheduler}, "my, model", "0123456789", "sdcpu 0.1.0")
    assert text.splitlines()[2] == "Negative prompt: blurry, dark"
    parsed = parse_parameters(text)
    expected = {k: SETTINGS[k] for k in ("prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height")}
    assert parsed == {**expected, "scheduler": scheduler}


def test_a1111s_own_text_is_read():
    text = (
        "masterpiece, a cat\nNegative prompt: lowres, bad anatomy\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, "
        'Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.6.0'
    )
    parsed = parse_parameters(text)
    assert parsed == dict(
        prompt="masterpiece, a cat", negative_prompt="lowres, bad anatomy", steps=30, guidance=7.0, seed=1234,
        width=512, height=768, scheduler="dpm++2m-karras",
    )  # fmt: skip
    assert parse_parameters("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}
    with pytest.raises(SdcpuError, match="sampler 'Heun' \\(schedule None\\) has no sdcpu equivalent; sdcpu has: DDIM"):
        parse_parameters("p\nSteps: 20, Sampler: Heun, CFG scale: 7, Seed: 1")


def _generate(tmp_path, name, *args):
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / name), "--compute-precision", "f32", *args])
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(tmp_path / name))


def test_from_png_runs_the_same_image_again_from_ours_and_from_a1111s_chunk(tmp_path):
    args = ["a red circle, left: blue", "--negative-prompt", "green", "--steps", "6", "--seed", "9"]
    first = _generate(tmp_path, "a.png", *args, "--scheduler", "euler-a", "--guidance", "5")
    assert (_generate(tmp_path, "b.png", "--from-png", str(tmp_path / "a.png")) == first).all()
    # A1111's chunk alone, as another tool would keep it
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", Image.open(tmp_path / "a.png").text["parameters"])
    Image.open(tmp_path / "a.png").save(tmp_path / "theirs.png", pnginfo=info)
    assert (_generate(tmp_path, "c.png", "--from-png", str(tmp_path / "theirs.png")) == first).all()
    # options given win over the image's
    other = _generate(tmp_path, "d.png", "--from-png", str(tmp_path / "a.png"), "--seed", "10")
    assert not (other == first).all() and Image.open(tmp_path / "d.png").text["seed"] == "10"


def test_given_noise_is_recorded_and_its_seed_not_trusted(tmp_path):
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
    latents = np.zeros((1, 4, 16, 16), np.float32)
    (path,) = pipe("a red circle", steps=2, seed=1, latents=latents).save(tmp_path / "given.png")
    text = Image.open(path).text
    assert text["noise"] == "given" and text["model"] == "sdcpu-demo" and text["model_source"].startswith("sdcpu demo")
    result = runner.invoke(app, ["generate", "--from-png", str(path), "--out", str(tmp_path / "again.png")])
    assert result.exit_code == 0 and "its seed does not reproduce it" in result.output


def test_lora_hashes_are_read_from_ours_and_from_a1111s_parameters():
    import json

    from sdcpu.runtime.io.stored import stored_lora_hashes

    a1111 = 'a cat <lora:night:0.8>\nSteps: 20, Seed: 1, Lora hashes: "night: 0123456789ab, day: ba9876543210", CFG: 7'
    assert stored_lora_hashes({"parameters": a1111}) == {"night": "0123456789ab", "day": "ba9876543210"}
    ours = json.dumps({"prompt": "a cat", "loras": [{"name": "night", "hash": "0123456789ab", "scale": 0.8}]})
    assert stored_lora_hashes({"sdcpu": ours, "parameters": a1111}) == {"night": "0123456789ab"}
    assert stored_lora_hashes({"parameters": "a cat\nSteps: 20, Seed: 1, Size: 64x64"}) == {}
