"""Conversion: manifest, single-file checkpoints, unsafe pickles, fp16, atomicity when killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

import ldm_checkpoint  # noqa: E402
import tiny  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sdcpu import Pipeline, SdcpuError  # noqa: E402
from sdcpu.cli.main import app  # noqa: E402
from sdcpu.export.convert import convert  # noqa: E402
from sdcpu.export.sources.presets import PRESETS  # noqa: E402
from sdcpu.export.sources.single_file import detect_preset  # noqa: E402
from sdcpu.format.manifest import COMPONENTS, Manifest, sha256_file  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

runner = CliRunner()
quiet = {"progress": lambda _: None}


def test_manifest_describes_and_hashes_the_folder(sd1_onnx, tiny_sd1):
    manifest = Manifest.load(sd1_onnx)
    assert (manifest.format, manifest.precision, manifest.prediction_type) == ("onnx", "fp32", "epsilon")
    assert manifest.sample_size == 64 and manifest.vae_scale_factor == 8
    assert manifest.source == str(tiny_sd1.resolve())
    assert {"torch", "diffusers", "onnx"} <= set(manifest.versions)
    # the fixture is converted with --tiny-vae; a depth estimator only comes with depth2img models, a second
    # text encoder with SDXL
    assert set(manifest.components) == set(COMPONENTS) - {"depth_estimator", "text_encoder_2"}
    assert "unet/model.onnx_data" in manifest.files  # weights in external data
    for rel, info in manifest.files.items():
        assert sha256_file(sd1_onnx / rel) == info["sha256"]
    # component configs keep no path of the converting machine (diffusers' `_name_or_path`)
    configs = [json.loads(path.read_text()) for path in sd1_onnx.glob("*/config.json")]
    assert len(configs) >= 5 and not any("_name_or_path" in config for config in configs)


@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    """The tiny SD 1 pipeline (same weights as tiny_sd1) saved as an original single-file checkpoint."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("single")
    state = ldm_checkpoint.sd1_checkpoint(*tiny.build_components())
    save_file(state, folder / "tiny.safetensors")
    torch.save({"state_dict": state, "global_step": 1}, folder / "tiny.ckpt")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), [("tiny.safetensors", "openvino"), ("tiny.ckpt", "onnx")])
def test_single_file_converts_offline_and_matches_diffusers(name, fmt, single_file, tiny_sd1, tmp_path, monkeypatch):
    # Each file type once, each format once (ONNX exports several times faster than OpenVINO IR).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "model"
    convert(str(single_file / name), out, fmt, config_dir=tiny_sd1, tokenizer_dir=tiny_sd1 / "tokenizer", **quiet)
    assert "preset sd1" in Manifest.load(out).source
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = Pipeline.load(out, LoadOptions(compute_precision="f32"))(
        "a cat", steps=5, scheduler="ddim", latents=latents, seed=0
    ).array
    pipe = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    theirs = pipe(
        "a cat", num_inference_steps=5, latents=torch.from_numpy(latents), output_type="np", height=64, width=64
    ).images
    assert float(np.abs(ours - theirs).max()) <= 2 / 255


def test_single_file_without_tokenizer_offline_says_what_to_do(single_file, tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["convert", str(single_file / "tiny.safetensors"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "--tokenizer" in result.output
    assert not (tmp_path / "o").exists()


class Payload:
    """Unpickling this would need arbitrary code: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unsafe_pickle_is_refused(tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, bad)
    result = runner.invoke(app, ["convert", str(bad), str(tmp_path / "o")])
    assert result.exit_code == 2 and "refusing" in result.output and "arbitrary code" in result.output
    assert not (tmp_path / "o").exists()


def test_presets_match_the_real_configs():
    if not tiny.REFERENCE.exists():
        pytest.skip("reference configs not present")
    pairs = {"sd1": "stable-diffusion-v1-4", "sd2-base": "stable-diffusion-2-1-base", "sd2-v": "stable-diffusion-2-1"}
    for preset_name, model in pairs.items():
        preset = PRESETS[preset_name]
        for component, ours in (("unet", preset.unet), ("vae", preset.vae), ("text_encoder", preset.text_encoder)):
            real = json.loads((tiny.REFERENCE / model / component / "config.json").read_text())
            for key, value in ours.items():
                if key in real and key not in ("sample_size", "scaling_factor"):
                    assert real[key] == (list(value) if isinstance(value, tuple) else value), (preset_name, key)
        real_scheduler = json.loads((tiny.REFERENCE / model / "scheduler" / "scheduler_config.json").read_text())
        assert real_scheduler.get("prediction_type", "epsilon") == preset.prediction_type


def test_detect_preset():
    assert detect_preset({"model.diffusion_model.x": 0}).name == "sd1"
    sd2 = {"model.diffusion_model.x": 0, "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": 0}
    assert detect_preset(sd2).name == "sd2-v"
    with pytest.raises(SdcpuError, match="no Stable Diffusion UNet"):
        detect_preset({"weight": 0})


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_fp16_halves_the_weights_and_stays_close(fmt, tiny_sd1, sd1_openvino, sd1_onnx, tmp_path):
    out = tmp_path / "fp16"
    manifest = convert(str(tiny_sd1), out, fmt, "fp16", **quiet)
    fp32 = sd1_openvino if fmt == "openvino" else sd1_onnx
    weights = "unet/openvino_model.bin" if fmt == "openvino" else "unet/model.onnx_data"
    ratio = manifest.files[weights]["bytes"] / Manifest.load(fp32).files[weights]["bytes"]
    assert 0.45 < ratio < 0.6
    assert manifest.components["unet"]["precision"] == "fp16"
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    a = Pipeline.load(out, LoadOptions(compute_precision="f32"))("a dog", steps=4, latents=latents, seed=1).array
    b = Pipeline.load(fp32, LoadOptions(compute_precision="f32"))("a dog", steps=4, latents=latents, seed=1).array
    assert float(np.abs(a - b).mean()) < 0.02


@pytest.mark.slow
def test_folder_with_tokenizer_json_only_converts_and_generates_the_same(tiny_sd1, sd1_onnx, tmp_path):
    # As transformers 5 saves a pipeline (and optimum-intel exports it): no vocab.json or merges.txt.
    # ONNX, as the format is not the subject here: it exports several times faster.
    source = tmp_path / "source"
    shutil.copytree(tiny_sd1, source, ignore=shutil.ignore_patterns("tokenizer"))
    tiny.write_tokenizer_json_only(tiny_sd1 / "tokenizer", source / "tokenizer")
    convert(str(source), tmp_path / "out", "onnx", **quiet)
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()
    assert not (tmp_path / "out" / "tokenizer" / "vocab.json").exists()
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    images = [
        Pipeline.load(folder, LoadOptions(compute_precision="f32"))("a red cat", steps=2, latents=latents, seed=0).array
        for folder in (tmp_path / "out", sd1_onnx)
    ]
    np.testing.assert_array_equal(images[0], images[1])


def test_failed_convert_leaves_nothing(tiny_sd1, tmp_path, monkeypatch):
    from sdcpu.export import writers

    def broken(spec, folder, precision, calibrate=None, recipe=None):
        raise RuntimeError("disk full")

    monkeypatch.setitem(writers.WRITERS, "onnx", broken)
    with pytest.raises(RuntimeError):
        convert(str(tiny_sd1), tmp_path / "out", "onnx", **quiet)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_convert_leaves_nothing_generate_accepts(tiny_sd1, tmp_path):
    out = tmp_path / "out"
    script = (
        f"from sdcpu.export.convert import convert\n"
        f"convert({str(tiny_sd1)!r}, {str(out)!r}, 'onnx', progress=lambda l: print(l, flush=True))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "unet: exported" in line:  # half-way: text encoder and UNet written, VAE not yet
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers, "expected the killed convert's temporary folder"
    for folder in leftovers:
        for candidate in [folder, *folder.iterdir()]:
            with pytest.raises(SdcpuError):
                Pipeline.load(candidate, LoadOptions(compute_precision="f32"))
    said: list[str] = []
    convert(str(tiny_sd1), out, "onnx", progress=said.append)  # the next convert to OUT clears the debris
    assert Manifest.load(out).format == "onnx"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert any(line.startswith("removed .out.partial-") and "killed" in line for line in said)


def test_converted_files_follow_the_umask(sd1_onnx, sd1_openvino):
    from sdcpu.runtime.io.outputs import umask

    for folder in (sd1_onnx, sd1_openvino):
        for path in [folder, *folder.rglob("*")]:
            expected = (0o777 if path.is_dir() else 0o666) & ~umask()
            assert path.stat().st_mode & 0o777 == expected, path


def test_runtime_imports_no_torch(sd1_openvino, sd1_onnx, tmp_path):
    script = f"""
import sys
from sdcpu.cli.main import app
for model in ({str(sd1_openvino)!r}, {str(sd1_onnx)!r}):
    try:
        app(["generate", "a cat", "--model", model, "--out", {str(tmp_path / "x.png")!r}, "--steps", "2", "--overwrite",
             "--init-image", {str(Path(__file__).parent / "data" / "init.png")!r}])
    except SystemExit as exit:
        assert exit.code in (0, None), exit.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
assert not heavy, heavy
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr


@pytest.mark.parametrize("option", [["--preset", "sd1"], ["--config", "."], ["--tokenizer", "."]])
def test_single_file_options_are_refused_for_folders(tiny_sd1, tmp_path, option):
    result = runner.invoke(app, ["convert", str(tiny_sd1), str(tmp_path / "out"), *option])
    assert result.exit_code == 2 and f"{option[0]}: for single-file checkpoints only" in result.output
    assert list(tmp_path.iterdir()) == []


def test_pickle_refusal_gives_no_advice_to_disable_safety(tmp_path):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": Payload()}, bad)
    result = runner.invoke(app, ["convert", str(bad), str(tmp_path / "o")])
    assert result.exit_code == 2 and "it calls posix.system" in result.output
    assert "weights_only" not in result.output and "\x1b[" not in result.output


def test_nan_weights_are_refused_at_convert_by_name(single_file, tiny_sd1, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(single_file / "tiny.safetensors")
    state["model.diffusion_model.out.2.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    args = ["convert", str(tmp_path / "nan.safetensors"), str(tmp_path / "o"), "--config", str(tiny_sd1)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "unet weight conv_out.weight holds NaN or Inf" in " ".join(result.output.split())
    assert [p.name for p in tmp_path.iterdir()] == ["nan.safetensors"]


@pytest.mark.slow
def test_single_file_with_config_reads_the_tokenizer_length(tmp_path, monkeypatch):
    # The demo model's prompts are 16 tokens: a single file converted with --config DEMO must keep them so.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from sdcpu.models import SOURCE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = [cls.from_pretrained(SOURCE, subfolder=sub) for cls, sub in ((CLIPTextModel, "text_encoder"),)]
    models += [UNet2DConditionModel.from_pretrained(SOURCE, subfolder="unet")]
    models += [AutoencoderKL.from_pretrained(SOURCE, subfolder="vae")]
    save_file(ldm_checkpoint.sd1_checkpoint(*models), tmp_path / "demo.safetensors")
    # ONNX (the format is not the subject), run on OpenVINO as the bundled demo is: the same graphs' maths
    convert(str(tmp_path / "demo.safetensors"), tmp_path / "onnx", "onnx", config_dir=SOURCE, **quiet)
    options = LoadOptions(backend="openvino", compute_precision="f32")
    ours = Pipeline.load(tmp_path / "onnx", options)("a red circle", steps=4, seed=0).array
    bundled = Pipeline.load(None, options)("a red circle", steps=4, seed=0).array
    assert float(np.abs(ours - bundled).max()) <= 1e-4


def test_openvino_folders_carry_the_tokenizer_as_openvino_irs(sd1_openvino):
    # What openvino.genai tokenizes with: the same ids as sdcpu's tokenizer, before padding.
    pytest.importorskip("openvino_tokenizers")
    import openvino as ov

    from sdcpu.runtime.components.tokenizer import ClipTokenizer

    manifest = Manifest.load(sd1_openvino)
    assert {"tokenizer/openvino_tokenizer.xml", "tokenizer/openvino_detokenizer.bin"} <= set(manifest.files)
    tokenizer = ov.Core().compile_model(sd1_openvino / "tokenizer" / "openvino_tokenizer.xml", "CPU")
    for prompt in ("a red cat", "A watercolor FOX, in the snow!"):
        theirs = tokenizer([prompt])["input_ids"][0]
        ours = ClipTokenizer(sd1_openvino / "tokenizer")([prompt])[0]
        assert ours[: len(theirs)].tolist() == theirs.tolist()


def test_tokenizer_irs_are_made_once_per_tokenizer_and_process(sd1_openvino, tmp_path, monkeypatch):
    # A second folder of the same tokenizer files gets the IR bytes made first; other files get new IRs.
    pytest.importorskip("openvino_tokenizers")
    import openvino_tokenizers

    from sdcpu.export import tokenizer_ir

    made = []
    real = openvino_tokenizers.convert_tokenizer
    monkeypatch.setattr(openvino_tokenizers, "convert_tokenizer", lambda *a, **k: made.append(1) or real(*a, **k))
    monkeypatch.setattr(tokenizer_ir, "_MADE", {})
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        shutil.copytree(sd1_openvino / "tokenizer", folder, ignore=shutil.ignore_patterns("openvino_*"))
    names = tokenizer_ir.write_tokenizer_irs(first)
    assert tokenizer_ir.write_tokenizer_irs(second) == names and len(made) == 1
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in names)
    config = json.loads((second / "tokenizer_config.json").read_text())
    (second / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 16}))
    tokenizer_ir.write_tokenizer_irs(second)
    assert len(made) == 2
