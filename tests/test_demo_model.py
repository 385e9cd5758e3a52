"""The bundled demo model: verified by its manifest, reproduced from its source weights, equal to
diffusers on the original weights, and following prompts as well on a 16-caption sample as on the
full held-out set (docs/quality.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.cli.main import app
from sdcpu.demo import world as world
from sdcpu.demo.oracle import evaluate
from sdcpu.format.manifest import Manifest
from sdcpu.models import CONVERTED, SOURCE
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline

CAPTION = "a small red circle on the left, blue background"
# Held-out accuracy (all attributes right) of the bundled model over all 240 captions, OpenVINO fp32,
# measured by bench/demo_quality.py (docs/quality.md). A 16-caption sample has a binomial standard
# error of about 9 points at this rate; the margin is two of those.
FULL_SET_ACCURACY = 0.858
SAMPLE_MARGIN = 0.16


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from sdcpu.export.convert import convert

    out = tmp_path_factory.mktemp("demo") / "onnx"
    convert(str(SOURCE), out, "onnx", "fp32", progress=lambda _: None)
    return out


def generate(folder: Path | None, caption: str = CAPTION, seed: int = 0, backend: str | None = None) -> np.ndarray:
    return Pipeline.load(folder, LoadOptions(backend=backend, compute_precision="f32"))(caption, seed=seed).array[0]


def test_bundled_demo_is_complete_and_verified():
    manifest = Manifest.load(CONVERTED)
    manifest.verify(CONVERTED, "full")
    assert (manifest.format, manifest.precision, manifest.sample_size) == ("openvino", "fp32", world.SIZE)
    size = sum(f.stat().st_size for f in [*CONVERTED.rglob("*"), *SOURCE.rglob("*")] if f.is_file())
    assert size < 30e6


@pytest.mark.parity
@pytest.mark.slow
def test_bundled_demo_equals_a_fresh_conversion_of_its_source(tmp_path):
    pytest.importorskip("torch")
    from sdcpu.export.convert import convert

    convert(str(SOURCE), tmp_path / "ov", "openvino", "fp32", progress=lambda _: None)
    np.testing.assert_allclose(generate(None), generate(tmp_path / "ov"), atol=1e-4)


def test_demo_on_onnxruntime_matches_openvino(demo_onnx):
    assert float(np.abs(generate(demo_onnx, backend="onnxruntime") - generate(None)).max()) <= 2 / 255


@pytest.mark.parity
def test_demo_matches_diffusers_on_the_original_weights():
    torch = pytest.importorskip("torch")
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SOURCE, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for seed in (0, 1):
        noise = np.random.default_rng(seed).standard_normal((1, 4, 16, 16), dtype=np.float32)
        theirs = pipe(CAPTION, num_inference_steps=20, latents=torch.from_numpy(noise), output_type="np").images[0]
        assert float(np.abs(generate(None, seed=seed) - theirs).max()) <= 2 / 255


def test_pixel_slice_golden():
    # Red and blue channels where the circle of CAPTION should be (x = 0.27, y = 0.5), seed 0, recorded from
    # the bundled model. 2/255 absorbs differences between CPU instruction sets and OpenVINO versions.
    image = generate(None)
    red = [[0.8880, 0.8832, 0.8874], [0.8752, 0.8676, 0.8710], [0.8674, 0.8636, 0.8700]]
    blue = [[0.1616, 0.1673, 0.1721], [0.1601, 0.1614, 0.1636], [0.1705, 0.1622, 0.1605]]
    np.testing.assert_allclose(image[30:33, 15:18, 0], red, atol=2 / 255)
    np.testing.assert_allclose(image[30:33, 15:18, 2], blue, atol=2 / 255)


def test_sixteen_caption_sample_reaches_the_full_set_accuracy():
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32"))
    report = evaluate(lambda caption, seed: pipe(caption, seed=seed).array[0], count=16)
    assert report.accuracy()["all"] >= FULL_SET_ACCURACY - SAMPLE_MARGIN


def test_first_command_of_the_readme_needs_no_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prompt = "a red circle on the left, blue background"
    # The README's command, with a fixed seed so that the oracle's verdict is reproducible.
    result = CliRunner().invoke(app, ["generate", prompt, "--out", "out.png", "--seed", "0"])
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "out.png")
    assert image.size == (world.SIZE, world.SIZE)
    assert image.info["prompt"] == prompt and "sdcpu" in image.info
    seen = world.judge(image)
    assert (seen["shape"], seen["colour"], seen["position"], seen["background"]) == ("circle", "red", "left", "blue")


@pytest.mark.parity
def test_demo_source_has_the_canonical_keys_every_loader_reads():
    # transformers 4.57 and 5.5 read CLIP weights only under "text_model."; without that prefix they
    # reported every key missing and used random weights. Every key must be where each version looks.
    pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import CLIPTextModel

    with safe_open(str(SOURCE / "text_encoder" / "model.safetensors"), "np") as f:
        assert all(key.startswith("text_model.") for key in f.keys())  # noqa: SIM118 (not a dict)
    _, info = CLIPTextModel.from_pretrained(SOURCE, subfolder="text_encoder", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        _, info = cls.from_pretrained(SOURCE, subfolder=sub, output_loading_info=True)
        assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), (sub, info)
