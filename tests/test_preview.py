"""Previews during denoising (runtime/io/preview.py): the fitted latent-to-RGB map, on the demo model and
from the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from sdcpu import Pipeline
from sdcpu.runtime.io.preview import LatentPreview
from sdcpu.runtime.options import LoadOptions


def test_the_map_is_exact_for_a_linear_decoder():
    # A decoder that is itself a per-pixel linear map (then upsampled) is recovered exactly.
    weights, bias = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32) * 0.3, np.float32(0.1)

    def decode(z):
        rgb = np.einsum("nchw,cd->ndhw", z * np.float32(0.5), weights) + bias
        return rgb.repeat(8, axis=2).repeat(8, axis=3)

    preview = LatentPreview(decode, channels=4, scaling=2.0, factor=8)
    latents = np.random.default_rng(2).standard_normal((1, 4, 6, 5), dtype=np.float32)
    expected = np.clip(decode(latents / 2.0)[0].transpose(1, 2, 0) / 2 + 0.5, 0, 1)
    got = np.asarray(preview(latents), dtype=np.float32) / 255
    assert got.shape == (48, 40, 3) and np.abs(got - expected).max() <= 1 / 255 + 1e-6


def test_the_demo_preview_comes_close_to_the_image():
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
    previews: list[Image.Image] = []
    result = pipe(
        "a red circle on the left", steps=20, seed=3, callback=lambda i, n, x: previews.append(pipe.preview(x))
    )
    final, last = np.asarray(result.images[0], dtype=np.float32), np.asarray(previews[-1], dtype=np.float32)
    assert last.shape == final.shape and len(previews) == 20
    # Far closer to the image than a flat grey is (28 against 54 levels when written): a sketch, not the image.
    assert np.abs(final - last).mean() < 0.7 * np.abs(final - 128).mean()


def test_generate_writes_previews(tmp_path):
    command = [sys.executable, "-m", "sdcpu", "generate", "a red circle", "--out", "out.png", "--steps", "6"]
    done = subprocess.run([*command, "--preview-every", "2", "--preview-out", "preview.png"], cwd=tmp_path)
    assert done.returncode == 0
    preview = Image.open(tmp_path / "preview.png")
    assert preview.size == Image.open(tmp_path / "out.png").size and preview.info["sdcpu_preview_step"] == "6/6"
