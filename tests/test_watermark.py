"""The opt-in invisible watermark: the payload reads back, with sdcpu's decoder and with the
invisible-watermark package's own (where installed), and the image barely changes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.cli.main import app
from sdcpu.runtime.io import watermark


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    smooth = np.stack([xx / 2, yy / 2, (xx + yy) / 4], -1) + rng.normal(0, 3, (512, 512, 3))
    shapes = {
        "smooth": np.clip(smooth, 0, 255).astype(np.uint8),
        "noise": rng.integers(0, 256, (512, 384, 3), dtype=np.uint8),
        "flat": np.full((256, 256, 3), 128, np.uint8),
        "shapes": np.where(((xx - 150) ** 2 + (yy - 250) ** 2 < 80**2)[..., None], [200, 30, 30], [30, 40, 190]),
    }
    return {name: np.ascontiguousarray(image, dtype=np.uint8) for name, image in shapes.items()}


@pytest.mark.parametrize("name", list(_images()))
def test_the_payload_reads_back_and_the_image_barely_changes(name):
    image = _images()[name]
    marked = watermark.embed(image)
    assert watermark.extract(marked) == watermark.PAYLOAD
    assert watermark.extract(image) != watermark.PAYLOAD
    psnr = 10 * np.log10(255**2 / np.mean((marked.astype(float) - image.astype(float)) ** 2))
    assert psnr > 35, psnr  # 38.6-41.7 dB measured on natural and synthetic images


@pytest.mark.parametrize("name", list(_images()))
def test_the_packages_decoder_reads_ours(name):
    cv2 = pytest.importorskip("cv2")
    imwatermark = pytest.importorskip("imwatermark")
    marked = watermark.embed(_images()[name])
    decoder = imwatermark.WatermarkDecoder("bytes", len(watermark.PAYLOAD) * 8)
    assert decoder.decode(cv2.cvtColor(marked, cv2.COLOR_RGB2BGR), "dwtDct") == watermark.PAYLOAD


def test_generate_watermarks_on_request_and_refuses_small_images(tmp_path):
    args = ["generate", "a red circle", "--steps", "4", "--compute-precision", "f32", "--watermark"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "w.png"), "--width", "256", "--height", "256"])
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "w.png")
    assert (
        watermark.extract(np.asarray(image.convert("RGB"))) == watermark.PAYLOAD and image.text["watermark"] == "True"
    )
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "small.png")])
    assert result.exit_code == 2 and "the watermark needs at least 65,536 pixels" in result.output
