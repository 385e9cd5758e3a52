"""The ControlNet depth annotator: a converted depth estimator (a transformers DPT folder or hub id, or an
SD 2 depth model's own) against transformers' DPT and A1111's scaling; the module offered only where an
estimator is given, through Python, the CLI and the server."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcpu.errors import SdcpuError
from sdcpu.runtime.controlnet.annotators import NEEDS_ESTIMATOR, Annotators
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.options import LoadOptions

pytestmark = pytest.mark.parity
F32 = LoadOptions(backend="openvino", compute_precision="f32", cache=False)  # resolved, as a pipeline's


def _photo(width: int = 80, height: int = 48) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(3)
    pixels = np.stack([x * 3 % 256, y * 5 % 256, (x + y) % 256], axis=-1) + rng.integers(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def dpt_folder(tmp_path_factory) -> Path:
    """A tiny DPT-Hybrid as a hub repository holds it: config, weights and image processor in one folder."""
    pytest.importorskip("transformers")
    import tiny

    work = tmp_path_factory.mktemp("dpt")
    tiny.write_depth_estimator(work, seed=2)
    shutil.copy(work / "feature_extractor" / "preprocessor_config.json", work / "depth_estimator")
    return work / "depth_estimator"


@pytest.fixture(scope="module")
def annotator_folder(dpt_folder, tmp_path_factory) -> Path:
    from sdcpu.export.convert import convert

    out = tmp_path_factory.mktemp("annotator") / "dpt-ov"
    manifest = convert(str(dpt_folder), out, "openvino", progress=lambda _: None)
    assert manifest.kind == "depth" and (out / "depth_estimator" / "openvino_model.xml").is_file()
    return out


def test_the_depth_map_matches_transformers_dpt_scaled_as_a1111(dpt_folder, annotator_folder):
    """transformers' DPT and image processor, its prediction resized bicubically to the photo's size, then
    A1111's scaling (minus the minimum, over the maximum, times 255, truncated): within one grey level."""
    import torch
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    from sdcpu.runtime.controlnet.depth import DepthAnnotator

    photo = _photo()
    ours = np.asarray(DepthAnnotator(annotator_folder, F32)(photo))
    processor = DPTImageProcessor.from_pretrained(dpt_folder)
    model = DPTForDepthEstimation.from_pretrained(dpt_folder).eval()
    with torch.no_grad():
        depth = model(**processor(photo, return_tensors="pt")).predicted_depth[:, None]
        depth = torch.nn.functional.interpolate(depth, size=(48, 80), mode="bicubic", align_corners=False)[0, 0]
    depth = depth - depth.min()
    theirs = (depth / depth.max() * 255).clamp(0, 255).numpy().astype(np.uint8)
    assert ours.shape == (48, 80, 3) and (ours[..., 0] == ours[..., 2]).all()
    assert np.abs(ours[..., 0].astype(int) - theirs.astype(int)).max() <= 1
    assert len(np.unique(theirs)) > 50  # a map with depth in it, not a flat one


def test_an_sd2_depth_models_own_estimator_serves_too(depth_openvino):
    from sdcpu.runtime.controlnet.depth import DepthAnnotator

    image = DepthAnnotator(depth_openvino, F32)(_photo(64, 64))
    assert image.size == (64, 64) and len(np.unique(np.asarray(image))) > 20


def test_the_depth_module_runs_where_an_estimator_is_given(sd1_openvino, controlnets_openvino, annotator_folder):
    from sdcpu import Pipeline
    from sdcpu.runtime.controlnet.depth import DepthAnnotator

    with pytest.raises(SdcpuError, match="the depth module needs a depth estimator: give --depth-estimator DIR"):
        ControlSetting.of(controlnets_openvino[0], _photo(64, 64), module="depth")
    assert Annotators().names() == ["none", "canny"]
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", depth_estimator=annotator_folder))
    annotators = pipe.controlnets.annotators
    assert annotators.names() == ["none", "canny", "depth", "depth_midas"]
    control = ControlSetting.of(controlnets_openvino[0], _photo(64, 64), module="depth_midas", annotators=annotators)
    expected = DepthAnnotator(annotator_folder, pipe.options)(_photo(64, 64))
    np.testing.assert_array_equal(np.asarray(control.image), np.asarray(expected))
    image = pipe("a cat", steps=3, seed=1, controls=[control])
    assert image.settings.png_metadata(0, {})["parameters"].count("Module: depth_midas") == 1
    with pytest.raises(SdcpuError, match="holds no converted depth estimator"):
        Pipeline.load(sd1_openvino, LoadOptions(depth_estimator=controlnets_openvino[0]))


def test_generate_and_the_server_take_a_depth_estimator(sd1_openvino, controlnets_openvino, annotator_folder, tmp_path):
    import base64
    import io

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from sdcpu import Pipeline
    from sdcpu.cli.main import app
    from sdcpu.serve.app import create_app

    _photo(64, 64).save(tmp_path / "photo.png")
    flags = ["--model", str(sd1_openvino), "--steps", "2", "--no-cache", "--out", str(tmp_path / "out.png")]
    control = ["--control", f"{controlnets_openvino[0]}:{tmp_path / 'photo.png'}", "--control-module", "depth"]
    result = CliRunner().invoke(
        app, ["generate", "a cat", *flags, *control, "--depth-estimator", str(annotator_folder)]
    )
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["generate", "a cat", *flags, *control, "--overwrite"])
    assert result.exit_code == 2 and NEEDS_ESTIMATOR in " ".join(result.output.split())

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", depth_estimator=annotator_folder))
    buffer = io.BytesIO()
    _photo(64, 64).save(buffer, format="PNG")
    body = {"controlnet_module": "depth", "controlnet_input_images": [base64.b64encode(buffer.getvalue()).decode()]}
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        modules = client.get("/controlnet/module_list").json()["module_list"]
        detected = client.post("/controlnet/detect", json=body).json()["images"][0]
    assert modules == ["none", "canny", "depth", "depth_midas"]
    expected = pipe.controlnets.annotators("depth", _photo(64, 64))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(detected)))), np.asarray(expected))


def test_a_depth_estimator_hub_id_fetches_its_one_model(dpt_folder, tmp_path, monkeypatch):
    import huggingface_hub

    from sdcpu.export.convert import convert
    from sdcpu.export.sources.hub import FAMILY_FILES

    asked: list[list[str]] = []

    def fake_snapshot(repo_id, allow_patterns):
        asked.append(allow_patterns)
        return str(dpt_folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    manifest = convert("Intel/dpt-tiny", tmp_path / "out", "onnx", progress=lambda _: None)
    assert asked == [FAMILY_FILES, ["config.json", "preprocessor_config.json", "model.safetensors"]]
    assert manifest.source == "Intel/dpt-tiny" and (tmp_path / "out" / "depth_estimator" / "model.onnx").is_file()
    with pytest.raises(SdcpuError, match="--tiny-vae: not for a depth estimator"):
        convert(str(dpt_folder), tmp_path / "again", "onnx", tiny_vae=dpt_folder, progress=lambda _: None)
