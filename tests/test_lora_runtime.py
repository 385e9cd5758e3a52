"""LoRAs at run time (runtime/lora/) on the tiny SD 1 pipeline, at f32 compute, OpenVINO:

- LoRA and LoCon files against diffusers' own `load_lora_weights` + `set_adapters`, unfused: one LoRA,
  two at different scales, kohya's layout of the same weights;
- LoHa and LoKr, which diffusers does not read, and a text-encoder LoRA (diffusers loads those through
  transformers, whose 5.x asks for a PEFT release newer than the registry has), against the sum
  W + scale · ΔW written out in torch (tests/loras.py);
- switching LoRAs and scales compiles nothing, and no LoRA gives the base image bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' own LoRA loading, the reference

import loras  # noqa: E402
import tiny  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sdcpu import Pipeline  # noqa: E402
from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402

pytestmark = pytest.mark.parity
PROMPT = "a red circle on the left"
STEPS = 4
TOLERANCE = 2 / 255


@pytest.fixture(scope="module")
def latents() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((1, 4, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def ours(sd1_openvino):
    """One pipeline for the module: every test switches its LoRAs."""
    return Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False))


def _run(pipe, latents, lora_list=()):
    return pipe(PROMPT, steps=STEPS, seed=1, scheduler="ddim", latents=latents, loras=lora_list).array


def _theirs(pipe, latents):
    out = pipe(PROMPT, num_inference_steps=STEPS, latents=torch.from_numpy(latents), output_type="np")
    return out.images


@pytest.fixture(scope="module")
def two_loras(tiny_sd1, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    unet = tiny.diffusers_pipeline(tiny_sd1).unet
    files = []
    for seed, name in ((3, "a"), (4, "b")):
        torch.manual_seed(seed)
        weights = loras.random_lora(unet, "unet", loras.UNET_TARGETS)
        files.append(loras.save_peft(weights, folder / f"{name}.safetensors", ("unet",)))
    return files


def test_one_lora_matches_diffusers_set_adapters(ours, tiny_sd1, two_loras, latents):
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    plain = _theirs(reference, latents)
    reference.load_lora_weights(str(two_loras[0]), adapter_name="a")
    reference.set_adapters(["a"], adapter_weights=[0.7])
    theirs = _theirs(reference, latents)
    assert float(np.abs(theirs - plain).max()) > 0.05  # the LoRA changes the image
    assert float(np.abs(_run(ours, latents, [(two_loras[0], 0.7)]) - theirs).max()) <= TOLERANCE


def test_two_loras_at_different_scales_match_diffusers(ours, tiny_sd1, two_loras, latents, tmp_path):
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    reference.load_lora_weights(str(two_loras[0]), adapter_name="a")
    reference.load_lora_weights(str(two_loras[1]), adapter_name="b")
    reference.set_adapters(["a", "b"], adapter_weights=[0.7, -0.4])
    theirs = _theirs(reference, latents)
    # the second in kohya's layout: the same weights, underscored names, lora_down/lora_up and alpha
    second = loras.kohya(two_loras[1], tmp_path / "b-kohya.safetensors")
    assert float(np.abs(_run(ours, latents, [(two_loras[0], 0.7), (second, -0.4)]) - theirs).max()) <= TOLERANCE


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_loha_and_lokr_match_their_sum_in_torch(ours, tiny_sd1, latents, tmp_path, kind):
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    torch.manual_seed(8)
    write = loras.loha if kind == "loha" else loras.lokr
    deltas = write(reference.unet, "lora_unet_", loras.UNET_TARGETS, tmp_path / f"{kind}.safetensors")
    plain = _theirs(reference, latents)
    loras.add_deltas(reference.unet, deltas, 0.6)
    theirs = _theirs(reference, latents)
    assert float(np.abs(theirs - plain).max()) > 0.05
    assert float(np.abs(_run(ours, latents, [(tmp_path / f"{kind}.safetensors", 0.6)]) - theirs).max()) <= TOLERANCE


def test_a_text_encoder_lora_matches_its_sum_in_torch(ours, tiny_sd1, latents, tmp_path):
    reference = tiny.diffusers_pipeline(tiny_sd1, "DDIMScheduler")
    torch.manual_seed(5)
    weights = loras.random_lora(reference.text_encoder, "text_encoder", loras.TEXT_TARGETS)
    peft = loras.save_peft(weights, tmp_path / "te.safetensors", ("text_encoder",))
    path = loras.kohya(peft, tmp_path / "kohya.safetensors")
    deltas = {}
    for name, _ in loras.layers(reference.text_encoder, loras.TEXT_TARGETS):
        up, down = weights[f"text_encoder.{name}.lora_B.weight"], weights[f"text_encoder.{name}.lora_A.weight"]
        deltas[name] = up @ down * loras.ALPHA / loras.RANK
    loras.add_deltas(reference.text_encoder, deltas, 0.8)
    theirs = _theirs(reference, latents)
    assert float(np.abs(_run(ours, latents, [(path, 0.8)]) - theirs).max()) <= TOLERANCE


def test_switching_compiles_nothing_and_no_lora_is_the_base_image(sd1_openvino, two_loras, latents):
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False))
    base = _run(pipe, latents)
    first = _run(pipe, latents, [(two_loras[0], 1.0)])
    compiled = pipe.unet._compiled
    half = _run(pipe, latents, [(two_loras[0], 0.5)])
    other = _run(pipe, latents, [(two_loras[1], 1.0)])
    both = _run(pipe, latents, [(two_loras[0], 0.5), (two_loras[1], 0.5)])
    zero = _run(pipe, latents, [(two_loras[0], 0.0)])
    none = _run(pipe, latents)
    assert pipe.unet._compiled is compiled  # the same compiled model ran every LoRA after the first
    np.testing.assert_array_equal(zero, base)
    np.testing.assert_array_equal(none, base)
    gap = lambda a, b: float(np.abs(a - b).mean())  # noqa: E731
    assert gap(half, base) < gap(first, base) and gap(half, first) < gap(first, base)  # in between
    assert gap(other, first) > 0.01 and gap(both, first) > 0.001


def test_the_png_records_each_lora(ours, two_loras, latents):
    result = ours(PROMPT, steps=2, seed=1, latents=latents, loras=[(two_loras[0], 0.7)])
    metadata = result.settings.png_metadata(0)
    name = two_loras[0].stem
    assert f"<lora:{name}:0.7>" in metadata["parameters"]
    assert "Lora hashes" in metadata["parameters"] and str(two_loras[0].parent) not in metadata["sdcpu"]


def test_onnx_runtime_refuses_run_time_loras(sd1_onnx, two_loras, latents):
    pipe = Pipeline.load(sd1_onnx, LoadOptions(backend="onnxruntime", compute_precision="f32"))
    with pytest.raises(SdcpuError, match="need the OpenVINO backend"):
        _run(pipe, latents, [(two_loras[0], 1.0)])


def _bad_file(tmp_path, source, kind):
    weights = load_file(source)
    key = next(k for k in weights if k.endswith("lora_A.weight"))
    if kind == "nan":
        weights[key][0, 0] = float("nan")
    elif kind == "shape":
        weights[key] = torch.zeros(weights[key].shape[0], 3)
    elif kind == "sdxl":
        weights = {"lora_te2_text_model_x.lora_down.weight": torch.zeros(4, 8)}
        weights["lora_te2_text_model_x.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / f"{kind}.safetensors"
    save_file(weights, path)
    if kind == "truncated":
        save_file(load_file(source), path)
        path.write_bytes(path.read_bytes()[:-100])
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nan", "holds NaN or Inf in unet layer"),
        ("shape", "does not fit this model"),
        ("sdxl", "is a LoRA for Stable Diffusion XL"),
        ("truncated", "is not a valid safetensors file"),
    ],
)
def test_a_bad_lora_is_refused_by_name(ours, two_loras, latents, tmp_path, kind, message):
    path = _bad_file(tmp_path, two_loras[0], kind)
    with pytest.raises(SdcpuError, match=message):
        _run(ours, latents, [(path, 1.0)])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 1e9])
def test_a_scale_that_is_not_finite_is_refused(ours, two_loras, latents, scale):
    with pytest.raises(SdcpuError, match="scale must be a finite number"):
        _run(ours, latents, [(two_loras[0], scale)])


def test_a1111_prompt_tags_give_the_image_of_the_lora_flag(sd1_openvino, two_loras, tmp_path):
    """`<lora:NAME:WEIGHT>` through /sdapi/v1/txt2img, against the same LoRA given as a file; a missing
    LoRA and a path out of the folder are 422s naming them; /sdapi/v1/loras lists the folder."""
    import base64
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from sdcpu.serve.app import create_app

    options = LoadOptions(compute_precision="f32", cache=False, lora_dir=two_loras[0].parent)
    pipe = Pipeline.load(sd1_openvino, options)
    expected = pipe(PROMPT, steps=4, seed=3, guidance=7.5, scheduler="pndm", loras=[(two_loras[0], 0.8)]).images[0]
    body = {"prompt": f"{PROMPT} <lora:{two_loras[0].stem}:0.8>", "steps": 4, "seed": 3, "cfg_scale": 7.5}
    with TestClient(create_app(pipe), base_url="http://127.0.0.1") as client:
        listed = client.get("/sdapi/v1/loras").json()
        assert {entry["name"] for entry in listed} == {f.stem for f in two_loras}
        answer = client.post("/sdapi/v1/txt2img", json=body | {"sampler_name": "PNDM"})
        assert answer.status_code == 200
        image = Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))
        info = json.loads(answer.json()["info"])  # as A1111's: the prompt as given, its tag kept
        assert info["prompt"] == body["prompt"] and info["all_prompts"] == [body["prompt"]]
        missing = client.post("/sdapi/v1/txt2img", json=body | {"prompt": "x <lora:nowhere:1>"})
        escape = client.post("/sdapi/v1/txt2img", json=body | {"prompt": "x <lora:../../etc/passwd:1>"})
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    assert missing.status_code == 422 and "no LoRA named 'nowhere'" in missing.json()["detail"]
    assert escape.status_code == 422 and "not by a path" in escape.json()["detail"]


def test_generate_applies_lora_flags_and_from_png_applies_them_again(sd1_openvino, two_loras, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from sdcpu.cli.main import app

    runner = CliRunner()
    flags = ["--model", str(sd1_openvino), "--compute-precision", "f32", "--no-cache", "--steps", "3", "--seed", "2"]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    result = runner.invoke(app, ["generate", PROMPT, "--out", str(first), "--lora", f"{two_loras[0]}:0.6", *flags])
    assert result.exit_code == 0, result.output
    recorded = Image.open(first).text
    assert f"<lora:{two_loras[0].stem}:0.6>" in recorded["parameters"]
    # Run again from the PNG: the LoRA is found by name in --lora-dir; without it, the error says so.
    folder = ["--lora-dir", str(two_loras[0].parent)]
    result = runner.invoke(app, ["generate", "--from-png", str(first), "--out", str(again), *flags, *folder])
    assert result.exit_code == 0 and "is not the file" not in result.output, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    # A LoRA of that name that is another file (one bit of its first weight changed): said, not silent.
    other, data = tmp_path / "other", bytearray(two_loras[0].read_bytes())
    data[8 + int.from_bytes(data[:8], "little")] ^= 1
    other.mkdir()
    (other / two_loras[0].name).write_bytes(bytes(data))
    changed = ["generate", "--from-png", str(first), "--out", str(tmp_path / "c.png"), *flags, "--lora-dir", str(other)]
    result = runner.invoke(app, changed)
    assert result.exit_code == 0 and f"LoRA {two_loras[0].stem} in {other} is not the file the image" in result.output
    result = runner.invoke(app, ["generate", "--from-png", str(first), "--out", str(tmp_path / "x.png"), *flags])
    assert result.exit_code == 2 and "--lora-dir" in result.output and not (tmp_path / "x.png").exists()
    bad = runner.invoke(app, ["generate", PROMPT, "--out", str(tmp_path / "y.png"), "--lora", "nowhere.safetensors"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and not (tmp_path / "y.png").exists()
