"""The command line: happy paths, determinism, and every bad input (exit code 2, message, no output)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.cli.main import app

runner = CliRunner()


def generate(model, out, *extra):
    args = ["--steps", "3", "--seed", "5", "--compute-precision", "f32", *extra]
    return runner.invoke(app, ["generate", "a red circle", "--model", str(model), "--out", str(out), *args])


@pytest.mark.parametrize("converted", ["openvino", "onnx"], indirect=True)
def test_generate_writes_png_with_metadata(converted, tmp_path):
    out = tmp_path / "image.png"
    result = generate(converted, out, "--negative-prompt", "blurry", "--scheduler", "euler-a")
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (64, 64)
    meta = image.text
    assert meta["prompt"] == "a red circle" and meta["negative_prompt"] == "blurry"
    assert (meta["seed"], meta["steps"], meta["scheduler"], meta["guidance"]) == ("5", "3", "euler-a", "7.5")
    assert meta["width"] == "64" and meta["height"] == "64" and "model" in meta
    # how it ran: the precision every network was compiled for, and the device by name
    assert meta["compute_precision"] == "f32" and meta["compute_precision_requested"] == "f32"
    assert meta["device"].startswith("CPU (") and json.loads(meta["sdcpu"])["runtime"]["backend"] == meta["backend"]


def test_same_seed_same_image_bit_for_bit(sd1_openvino, tmp_path):
    for name in ("a.png", "b.png"):
        assert generate(sd1_openvino, tmp_path / name, "--scheduler", "euler-a").exit_code == 0
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert np.array_equal(a, b)
    assert generate(sd1_openvino, tmp_path / "c.png", "--seed", "6").exit_code == 0
    assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "c.png")))
    # --low-memory computes the same image (guidance as batch-1 calls: at most one 8-bit level apart)
    assert (
        generate(sd1_openvino, tmp_path / "d.png", "--scheduler", "euler-a", "--low-memory", "--no-cache").exit_code
        == 0
    )
    d = np.asarray(Image.open(tmp_path / "d.png"))
    assert np.abs(a.astype(int) - d).max() <= 1


def test_several_images_and_img2img(sd1_onnx, tmp_path):
    result = generate(sd1_onnx, tmp_path / "many.png", "--num-images", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "many-0.png").exists() and (tmp_path / "many-1.png").exists()
    init = tmp_path / "init.png"
    Image.fromarray(np.full((70, 90, 3), 200, dtype=np.uint8)).save(init)
    result = generate(sd1_onnx, tmp_path / "i2i.png", "--init-image", str(init), "--strength", "0.5")
    assert result.exit_code == 0, result.output
    image = Image.open(tmp_path / "i2i.png")
    assert image.size == (88, 64) and image.text["strength"] == "0.5"
    extra = ("--init-image", str(init), "--num-images", "2", "--low-memory")
    result = generate(sd1_onnx, tmp_path / "low.png", *extra)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "low-1.png").size == (88, 64)


def test_long_prompt_warns_what_was_cut(sd1_openvino, tmp_path):
    prompt = " ".join(f"word{i}" for i in range(120))
    result = runner.invoke(
        app, ["generate", prompt, "--model", str(sd1_openvino), "--out", str(tmp_path / "x.png"), "--steps", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "cut" in result.output and "word119" in result.output


BAD_SETTINGS = [
    (["--width", "60"], "multiples of 8"),
    (["--steps", "0"], "at least 1"),
    (["--guidance", "-1"], "guidance"),
    (["--guidance", "nan"], "finite"),
    (["--guidance", "inf"], "finite"),
    (["--steps", "1000"], "below the model's 1000 timesteps"),
    (["--steps", "1000000"], "below the model's 1000 timesteps"),
    (["--init-image", "INIT", "--strength", "0"], "strength"),
    (["--init-image", "INIT", "--strength", "1.5"], "strength"),
    (["--scheduler", "heun"], "unknown scheduler"),
    (["--backend", "tensorrt"], "unknown backend"),
]


@pytest.mark.parametrize("args,message", BAD_SETTINGS)
def test_bad_settings_exit_2_and_write_nothing(args, message, sd1_openvino, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64)).save(init)
    out = tmp_path / "out.png"
    result = generate(sd1_openvino, out, *[str(init) if a == "INIT" else a for a in args])
    assert result.exit_code == 2 and message in result.output
    assert list(tmp_path.iterdir()) == [init]


def test_nan_weights_stop_the_run_without_a_png(sd1_openvino, tmp_path):
    # A folder whose UNet weights are NaN, re-hashed after the damage so that it verifies.
    import openvino as ov
    import openvino.opset13 as ops

    broken = tmp_path / "broken"
    shutil.copytree(sd1_openvino, broken)
    graph = broken / "unet" / "openvino_model.xml"
    model = ov.Core().read_model(graph)
    for node in model.get_ops():
        if node.get_type_name() == "Constant" and node.get_output_element_type(0) == ov.Type.f32:
            shape = list(node.get_output_shape(0))
            if int(np.prod(shape)) >= 1024:
                node.output(0).replace(ops.constant(np.full(shape, np.nan, np.float32)).output(0))
    ov.save_model(model, broken / "unet" / "nan.xml")
    for suffix in (".xml", ".bin"):
        (broken / "unet" / f"nan{suffix}").replace(graph.with_suffix(suffix))
    from dataclasses import replace

    from sdcpu import Pipeline
    from sdcpu.errors import SdcpuError
    from sdcpu.format.manifest import MANIFEST_NAME, Manifest, describe_files
    from sdcpu.runtime.options import LoadOptions

    manifest = Manifest.load(broken)
    rehashed = replace(manifest, files=describe_files(broken, list(manifest.files)))
    (broken / MANIFEST_NAME).write_text(rehashed.to_json())
    pipe = Pipeline.load(broken, LoadOptions(cache=False, compute_precision="f32"))
    with pytest.raises(SdcpuError, match="NaN or Inf appeared in the UNet's output at step 1"):
        pipe("a cat", steps=2, seed=0)


def test_unreadable_init_image(sd1_openvino, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = generate(sd1_openvino, tmp_path / "out.png", "--init-image", str(bad))
    assert result.exit_code == 2 and "cannot read the init image" in result.output
    assert not (tmp_path / "out.png").exists()


def test_output_folder_missing_or_a_folder(sd1_openvino, tmp_path):
    result = generate(sd1_openvino, tmp_path / "missing" / "out.png")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = generate(sd1_openvino, tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output


def test_missing_incomplete_and_tampered_model_folders(sd1_openvino, tmp_path):
    result = generate(tmp_path / "nowhere", tmp_path / "o.png")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = generate(tmp_path, tmp_path / "o.png")
    assert result.exit_code == 2 and "not an sdcpu model folder" in result.output

    incomplete = tmp_path / "incomplete"
    shutil.copytree(sd1_openvino, incomplete)
    (incomplete / "unet" / "openvino_model.bin").unlink()
    result = generate(incomplete, tmp_path / "o.png")
    assert result.exit_code == 2 and "incomplete" in result.output

    tampered = tmp_path / "tampered"
    shutil.copytree(sd1_openvino, tampered)
    weights = tampered / "unet" / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = generate(tampered, tmp_path / "o.png")
    assert result.exit_code == 2 and "sha256" in result.output
    assert not (tmp_path / "o.png").exists()


def test_convert_refuses_bad_requests(tiny_sd1, sd1_openvino, tmp_path):
    result = runner.invoke(app, ["convert", str(tiny_sd1), str(sd1_openvino)])
    assert result.exit_code == 2 and "--force" in result.output
    result = runner.invoke(app, ["convert", str(tiny_sd1), str(tmp_path / "x"), "--precision", "int3"])
    assert result.exit_code == 2 and "fp32" in result.output and not (tmp_path / "x").exists()
    result = runner.invoke(app, ["convert", str(tmp_path / "nothing-here"), str(tmp_path / "y")])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert list(tmp_path.iterdir()) == []


def test_bench_runs_two_models_alternately_and_writes_json(sd1_openvino, sd1_onnx, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(sd1_openvino), "--compare", str(sd1_onnx), "--steps", "2", "--runs", "2"]
    extra = ["--backend", "openvino", "--compute-precision", "f32", "--json", str(out)]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    assert "B / A" in result.output and "UNet step" in result.output and "compute" in result.output
    report = json.loads(out.read_text())
    assert [m["precision"] for m in report["models"]] == ["fp32", "fp32"]
    assert [m["compute_precision"] for m in report["models"]] == ["f32", "f32"]
    # what it ran on: the CPU by name, its ISA and OpenVINO's view of it
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and "FP32" in machine["openvino"]
    for model in report["models"]:
        assert model["unet_step_s"] > 0 and model["end_to_end_s"] > model["unet_step_s"]
        assert model["peak_rss_gb"] > 0.05


def test_bench_low_memory_times_whole_steps(sd1_openvino, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(sd1_openvino), "--steps", "3", "--runs", "1", "--low-memory", "--no-cache"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["load"]["low_memory"] == "True" and report["settings"]["load"]["cache"] == "False"
    assert report["models"][0]["unet_step_s"] > 0


def test_bench_reports_full_and_shallow_steps_with_deep_cache(sd1_openvino, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(sd1_openvino), "--steps", "5", "--runs", "1", "--deep-cache", "2"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "shallow UNet step" in result.output
    model = json.loads(out.read_text())["models"][0]
    assert model["unet_step_s"] > 0 and model["unet_shallow_step_s"] > 0


def test_bench_refuses_a_missing_folder(tmp_path):
    result = runner.invoke(app, ["bench", "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_bench_reports_a_worker_error_instead_of_hanging(sd1_openvino):
    result = runner.invoke(app, ["bench", "--model", str(sd1_openvino), "--backend", "nope", "--steps", "1"])
    assert result.exit_code == 2 and "unknown backend" in result.output


def test_cache_shows_and_clears_only_its_own_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path))
    for name, size in (("a.blob", 3_000_000), ("b.blob", 1_000_000), ("verified-files.json", 10), ("notes.txt", 5)):
        (tmp_path / name).write_bytes(b"x" * size)
    shown = runner.invoke(app, ["cache"])
    assert shown.exit_code == 0 and f"{tmp_path}: 3 files, 4 MB" in shown.output
    assert (tmp_path / "a.blob").exists()  # showing deletes nothing
    cleared = runner.invoke(app, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "4 MB freed" in cleared.output
    assert [f.name for f in tmp_path.iterdir()] == ["notes.txt"]  # not the cache's: kept


def test_generate_passes_graph_rewrites_to_the_pipeline(monkeypatch, tmp_path):
    from sdcpu.errors import SdcpuError
    from sdcpu.runtime.pipelines.base import Pipeline

    seen = {}

    def load(folder, options):
        seen.update(options.__dict__)
        raise SdcpuError("stop here")

    monkeypatch.setattr(Pipeline, "load", load)
    args = ["generate", "a cat", "--out", str(tmp_path / "a.png"), "--no-winograd", "--token-downsampling", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "stop here" in result.output
    assert seen["winograd"] is False and seen["low_memory"] is False and seen["token_downsampling"] == 2
