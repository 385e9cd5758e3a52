"""ControlNet through the CLI and A1111's ControlNet API (sd-webui-controlnet's `alwayson_scripts` units,
/controlnet/model_list, module_list and detect): the same image both ways, and bad units refused with a
4xx that says why."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi")
pytestmark = pytest.mark.parity

PROMPT = "a red circle on the left"


def _disc(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size)
    w, h = size
    ImageDraw.Draw(image).ellipse((w // 6, h // 6, w * 5 // 6, h * 5 // 6), fill=(255, 255, 255))
    return image


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def controlnet_dir(controlnets_openvino, tmp_path):
    folder = tmp_path / "controlnets"
    for name, source in zip(("edges-a", "edges-b"), controlnets_openvino, strict=True):
        shutil.copytree(source, folder / name)
    return folder


def test_an_a1111_unit_gives_the_image_of_the_control_flag(sd1_openvino, controlnet_dir, tmp_path):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from sdcpu import Pipeline
    from sdcpu.cli.main import app
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.serve.app import create_app

    _disc().save(tmp_path / "disc.png")
    flags = ["--model", str(sd1_openvino), "--compute-precision", "f32", "--no-cache", "--steps", "4", "--seed", "5"]
    flags += ["--controlnet-dir", str(controlnet_dir), "--scheduler", "euler", "--guidance", "6"]
    control = ["--control", f"edges-a:{tmp_path / 'disc.png'}:0.8:0:0.75", "--control-module", "canny"]
    out = tmp_path / "cli.png"
    result = CliRunner().invoke(app, ["generate", PROMPT, "--out", str(out), *flags, *control])
    assert result.exit_code == 0, result.output
    assert 'ControlNet 0: "Module: canny, Model: edges-a [' in Image.open(out).text["parameters"]
    # --from-png: the control image is not in the PNG; without --control again the run says so.
    again = tmp_path / "again.png"
    result = CliRunner().invoke(app, ["generate", "--from-png", str(out), "--out", str(again), *flags])
    assert result.exit_code == 0 and "give --control FOLDER:IMAGE again" in result.output, result.output

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False, controlnet_dir=controlnet_dir))
    unit = {"image": _b64(_disc()), "module": "canny", "weight": 0.8, "guidance_start": 0, "guidance_end": 0.75}
    body = {"prompt": PROMPT, "steps": 4, "seed": 5, "cfg_scale": 6, "sampler_name": "Euler", "scheduler": "Uniform"}
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        models = client.get("/controlnet/model_list").json()["model_list"]
        assert [m.split(" [")[0] for m in models] == ["edges-a", "edges-b"]
        unit["model"] = models[0]  # by A1111's title, "NAME [HASH]"
        answer = client.post("/sdapi/v1/txt2img", json=body | {"alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert answer.status_code == 200, answer.text
        assert "image" not in answer.json()["parameters"]["alwayson_scripts"]["controlnet"]["args"][0]
        served = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        off = {"controlnet": {"args": [unit | {"enabled": False}]}}
        plain = client.post("/sdapi/v1/txt2img", json=body | {"alwayson_scripts": off})
    np.testing.assert_array_equal(np.asarray(served), np.asarray(Image.open(out)))
    plain_image = Image.open(io.BytesIO(base64.b64decode(plain.json()["images"][0])))
    assert np.abs(np.asarray(plain_image, dtype=int) - np.asarray(served, dtype=int)).max() > 10


def test_module_list_and_detect_run_the_annotators(sd1_openvino, controlnet_dir):
    from fastapi.testclient import TestClient

    from sdcpu import Pipeline
    from sdcpu.runtime.controlnet.annotators import canny
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.serve.app import create_app

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False, controlnet_dir=controlnet_dir))
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        assert client.get("/controlnet/module_list").json() == {"module_list": ["none", "canny"]}
        assert client.get("/controlnet/version").json() == {"version": 2}
        body = {"controlnet_module": "canny", "controlnet_input_images": [_b64(_disc())]}
        detected = client.post(
            "/controlnet/detect", json=body | {"controlnet_threshold_a": 50, "controlnet_threshold_b": 90}
        )
        unknown = client.post("/controlnet/detect", json=body | {"controlnet_module": "openpose"})
    image = Image.open(io.BytesIO(base64.b64decode(detected.json()["images"][0])))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(canny(_disc(), 50, 90)))
    assert unknown.status_code == 422 and "none, canny" in unknown.json()["detail"]


BAD_UNITS = [
    ({"model": "nowhere"}, "no ControlNet named 'nowhere'"),
    ({"model": "../../etc"}, "not by a path"),
    ({"model": "edges-a [00000000]"}, "its hash differs"),
    ({"module": "openpose"}, "unknown ControlNet module"),
    ({"weight": 5}, "weight must be from 0 to 2"),
    ({"guidance_start": 0.9, "guidance_end": 0.1}, "start < end"),
    ({"control_mode": 7}, "unknown control_mode"),
    ({"image": "bm90IGFuIGltYWdl"}, "not a base64 PNG"),
    ({"image": None}, "needs `image`"),
    ({"image": "wide"}, "another aspect"),
]


def test_bad_units_are_refused_with_what_to_do(sd1_openvino, controlnet_dir):
    from fastapi.testclient import TestClient

    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.serve.app import create_app

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False, controlnet_dir=controlnet_dir))
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        for change, words in BAD_UNITS:
            unit = {"model": "edges-a", "image": _b64(_disc())} | change
            if unit["image"] == "wide":
                unit["image"] = _b64(_disc((128, 64)))
            body = {"prompt": PROMPT, "steps": 2, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
            answer = client.post("/sdapi/v1/txt2img", json=body)
            assert answer.status_code in (400, 413, 422) and words in answer.json()["detail"], (change, answer.text)
        other = client.post("/sdapi/v1/txt2img", json=body | {"alwayson_scripts": {"adetailer": {"args": []}}})
    assert other.status_code == 422 and "adetailer" in other.json()["detail"]


def test_the_native_api_and_the_page_take_a_control_image(sd1_openvino, controlnet_dir):
    import time

    from fastapi.testclient import TestClient

    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.serve.app import create_app

    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False, controlnet_dir=controlnet_dir))
    control = {"model": "edges-b", "image": _b64(_disc()), "module": "canny", "weight": 0.7, "mode": "prompt"}
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        assert client.get("/api/model").json()["controlnets"] == ["edges-a", "edges-b"]
        page = client.get("/").text
        assert 'id="control_image"' in page and 'id="control_model"' in page
        job = client.post("/api/jobs", json={"prompt": PROMPT, "steps": 3, "controls": [control]}).json()
        for _ in range(600):
            job = client.get(f"/api/jobs/{job['id']}").json()
            if job["status"] not in ("queued", "running"):
                break
            time.sleep(0.1)
        missing = client.post("/api/jobs", json={"prompt": PROMPT, "controls": [control | {"model": "nowhere"}]})
    assert job["status"] == "done", job
    recorded = job["settings"]["controls"][0]
    assert (recorded["name"], recorded["weight"], recorded["mode"], recorded["module"]) == (
        "edges-b",
        0.7,
        "prompt",
        "canny",
    )
    assert 'ControlNet 0: "Module: canny, Model: edges-b [' in job["infotexts"][0]
    assert missing.status_code == 422 and "no ControlNet named 'nowhere'" in missing.json()["detail"]
