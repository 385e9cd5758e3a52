"""Compute precision: chosen in one place, always set on OpenVINO, recorded, and bf16 measured on its own.

bf16 tolerances, measured on an AMD EPYC Zen 4 (AVX512_BF16) with OpenVINO 2026.4 and doubled:
- components against PyTorch fp32: max abs diff 0.9% (text encoder), 2.3% (UNet), 2.8% (VAE decoder)
  of the output's largest magnitude; bound 5%;
- the tiny pipeline (random weights, 8 steps) against f32: mean 1.5-2.3/255, max 16-19/255 per pixel;
  bound mean 5/255;
- the demo model against f32: mean 0.23-0.25/255, max 4.3-6.2/255; bounds mean 1/255, max 12/255.
The bf16 tests are skipped, with the reason, on CPUs without native bf16; the rest run everywhere, and
force each path (f32 on a bf16 CPU, `auto` for a CPU without bf16) so that both kinds are tested on either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import Manifest
from sdcpu.runtime import precision
from sdcpu.runtime.components.unet import unet_interfaces
from sdcpu.runtime.engines import load_model
from sdcpu.runtime.options import LoadOptions

NATIVE_BF16 = "BF16" in precision.openvino_capabilities("CPU")
needs_bf16 = pytest.mark.skipif(
    not NATIVE_BF16, reason="this CPU has no native bf16 (no BF16 in OpenVINO's capabilities)"
)
CAPTION = "a small red circle on the left, blue background"
AVX2_ONLY = ("WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT")  # OpenVINO's capabilities on a Zen 3
AVX512_BF16 = ("BF16", *AVX2_ONLY)


def test_auto_picks_bf16_only_where_the_cpu_has_it():
    assert precision.resolve("auto", "openvino", "CPU", AVX512_BF16) == "bf16"
    assert precision.resolve("auto", "openvino", "CPU", AVX2_ONLY) == "f32"
    assert precision.resolve("auto", "onnxruntime", "CPU", AVX512_BF16) == "f32"
    assert precision.resolve("auto", "openvino", "GPU", ("FP32", "FP16")) is None  # the GPU's own default
    assert precision.resolve("f32", "openvino", "CPU", AVX512_BF16) == "f32"


@pytest.mark.parametrize(
    ("requested", "backend", "capabilities", "message"),
    [
        ("bf16", "openvino", AVX2_ONLY, "no native bf16"),
        ("bf16", "onnxruntime", AVX512_BF16, "computes in f32 only"),
        ("fp16", "openvino", AVX512_BF16, "unknown compute precision"),
    ],
)
def test_a_precision_that_cannot_run_is_refused(requested, backend, capabilities, message):
    with pytest.raises(SdcpuError, match=message):
        precision.resolve(requested, backend, "CPU", capabilities)


def test_int8_activations_default_to_int8_hybrid_folders_on_cpus_with_int8_dot_products():
    vnni = precision.CpuInfo("Zen 4", 2, ("AVX2", "FMA", "AVX-512", "AVX512_BF16", "AVX512_VNNI"))
    avx2 = precision.CpuInfo("Zen 3", 2, ("AVX2", "FMA"))
    assert precision.resolve_int8_activations(None, "openvino", "int8-hybrid", vnni) is True
    assert precision.resolve_int8_activations(None, "openvino", "int8-hybrid", avx2) is False
    assert precision.resolve_int8_activations(None, "openvino", "int8", vnni) is False
    assert precision.resolve_int8_activations(None, "onnxruntime", "int8-hybrid", vnni) is False
    assert precision.resolve_int8_activations(True, "openvino", "fp32", avx2) is True  # asked for: as asked
    with pytest.raises(SdcpuError, match="need --backend openvino"):
        precision.resolve_int8_activations(True, "onnxruntime", "int8", vnni)


def test_networks_bf16_computes_wrongly_run_at_f32():
    """precision.network_precision's two exceptions to bf16, and nothing else changed."""
    amx = precision.CpuInfo("Xeon", 2, ("AVX2", "FMA", "AVX-512", "AVX512_BF16", "AMX-BF16"))
    zen5 = precision.CpuInfo("Zen 5", 2, ("AVX2", "FMA", "AVX-512", "AVX512_BF16", "AVX512_VNNI"))
    for cpu in (amx, zen5):
        for stored in ("int8", "int8-hybrid", "int4"):  # compressed lookup tables, on every CPU
            assert precision.network_precision("text_encoder_2", stored, "bf16", cpu) == "f32"
        assert precision.network_precision("text_encoder", "fp16", "bf16", cpu) == "bf16"
        assert precision.network_precision("unet", "int8", "bf16", cpu) == "bf16"
        assert precision.network_precision("vae_decoder", "int8-hybrid", "bf16", cpu) == "bf16"
        assert precision.network_precision("unet", "int8-hybrid", "f32", cpu) == "f32"
    assert precision.network_precision("unet", "int8-hybrid", "bf16", amx) == "f32"
    assert precision.network_precision("unet_shallow", "int8-hybrid", "bf16", amx) == "f32"
    assert precision.network_precision("unet", "int8-hybrid", "bf16", zen5) == "bf16"


def test_cpu_info_reads_model_family_and_isa(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni avx_vnni\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    cpu = precision.cpu_info(cpuinfo)
    assert cpu.model == "AMD EPYC (family 26, model 2)"
    assert cpu.isa == ("AVX2", "FMA", "AVX-512", "AVX512_BF16", "AVX512_VNNI", "AVX-VNNI")


def test_f32_is_what_runs_when_asked_on_every_cpu(sd1_openvino):
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32", cache=False))
    result = pipe("a cat", steps=2, seed=0)
    assert result.runtime["compute_precision"] == "f32"  # as the compiled models report it
    assert result.runtime["compute_precision_requested"] == "f32"


def test_the_blob_key_holds_the_compute_precision(sd1_openvino, tmp_path):
    graph = Manifest.load(sd1_openvino).graph_path(sd1_openvino, "vae_decoder")
    latent = np.zeros((1, 4, 8, 8), np.float32)
    for compute in ("f32", "bf16") if NATIVE_BF16 else ("f32",):
        options = LoadOptions(backend="openvino", compute_precision=compute, cache_dir=tmp_path)
        load_model(graph, options)(latent_sample=latent)
    assert len(list(tmp_path.glob("*.blob"))) == (2 if NATIVE_BF16 else 1)


@needs_bf16
@pytest.mark.parity
def test_bf16_components_stay_near_pytorch(sd1_openvino):
    torch = pytest.importorskip("torch")
    import tiny

    text_encoder, unet, _ = tiny.build_components()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, tiny.TEXT["vocab_size"], size=(2, 77), dtype=np.int64)
    sample, hidden = rng.standard_normal((2, 4, 8, 8), np.float32), rng.standard_normal((2, 77, 32), np.float32)
    timestep = np.array([801.5, 801.5], dtype=np.float32)
    with torch.no_grad():
        expected = {
            "text_encoder": text_encoder(torch.from_numpy(ids))[0].numpy(),
            "unet": unet(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(hidden)).sample.numpy(),
        }
    inputs = {"text_encoder": {"input_ids": ids}, "unet": {"sample": sample, "timestep": timestep}}
    inputs["unet"]["encoder_hidden_states"] = hidden
    manifest = Manifest.load(sd1_openvino)
    for name, feed in inputs.items():
        options = LoadOptions(backend="openvino", compute_precision="bf16", cache=False)
        interface = unet_interfaces(manifest).get(name)  # as the pipeline loads it: a float32 timestep
        model = load_model(manifest.graph_path(sd1_openvino, name), options, interface=interface)
        relative = float(np.abs(model(**feed) - expected[name]).max() / np.abs(expected[name]).max())
        assert model.compute_precision == "bf16"
        assert 0 < relative <= 0.05, f"{name}: {relative:.4f}"  # > 0: bf16 really ran


@needs_bf16
def test_bf16_pipeline_stays_near_f32(sd1_openvino):
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)
    images = {}
    for compute in ("f32", "bf16"):
        pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision=compute, cache=False))
        result = pipe("a red circle", steps=8, latents=latents, seed=0, scheduler="ddim")
        assert result.runtime["compute_precision"] == compute
        images[compute] = result.array
    assert 0 < float(np.abs(images["bf16"] - images["f32"]).mean()) <= 5 / 255


@needs_bf16
def test_bf16_demo_image_stays_near_f32_and_keeps_the_oracles_verdict():
    from sdcpu.demo import world as world

    for seed in (0, 1):
        f32 = Pipeline.load(None, LoadOptions(compute_precision="f32"))(CAPTION, seed=seed).images[0]
        bf16 = Pipeline.load(None, LoadOptions(compute_precision="bf16"))(CAPTION, seed=seed).images[0]
        diff = np.abs(np.asarray(f32, np.float32) - np.asarray(bf16, np.float32))
        assert diff.mean() <= 1 and diff.max() <= 12, (diff.mean(), diff.max())
        assert world.judge(bf16) == world.judge(f32)


@needs_bf16
def test_generate_on_a_bf16_cpu_records_bf16_in_the_png(tmp_path):
    from typer.testing import CliRunner

    from sdcpu.cli.main import app

    out = tmp_path / "auto.png"
    result = CliRunner().invoke(app, ["generate", CAPTION, "--out", str(out), "--seed", "0", "--steps", "4"])
    assert result.exit_code == 0, result.output
    meta = Image.open(out).text
    assert meta["compute_precision"] == "bf16" and meta["compute_precision_requested"] == "auto"
    assert "bf16" in result.output


def test_onnxruntime_refuses_bf16_before_any_work(sd1_onnx):
    with pytest.raises(SdcpuError, match="computes in f32 only"):
        Pipeline.load(sd1_onnx, LoadOptions(compute_precision="bf16"))


def test_cli_refuses_an_unknown_precision(tmp_path: Path):
    from typer.testing import CliRunner

    from sdcpu.cli.main import app

    result = CliRunner().invoke(app, ["generate", "x", "--out", str(tmp_path / "x.png"), "--compute-precision", "fp8"])
    assert result.exit_code == 2 and not (tmp_path / "x.png").exists()
