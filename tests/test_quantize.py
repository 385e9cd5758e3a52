"""Low precisions on the tiny pipeline: each converts, its graphs hold the expected low-bit weights
(a structural check per component), and generation is deterministic and near the fp32 images."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("nncf")
pytestmark = pytest.mark.parity

from sdcpu.errors import SdcpuError  # noqa: E402
from sdcpu.export.calibration import CalibrationSettings  # noqa: E402
from sdcpu.export.convert import convert  # noqa: E402
from sdcpu.format.manifest import Manifest  # noqa: E402
from sdcpu.runtime.options import LoadOptions  # noqa: E402
from sdcpu.runtime.pipelines.base import Pipeline  # noqa: E402
from sdcpu.runtime.precision import cpu_info  # noqa: E402

CASES = [("openvino", "int8"), ("openvino", "int4"), ("openvino", "int8-hybrid"), ("onnx", "int8")]
COMPONENTS = ("text_encoder", "unet", "unet_shallow", "vae_decoder", "vae_encoder")
LARGE = 1024  # weights smaller than this stay float (biases, norms)
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # pinned: the CPU plugin computes in bf16 by default where the CPU has it


@pytest.fixture(scope="session")
def quantized(tiny_sd1, tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("quantized")
    folders = {}
    for fmt, precision in CASES:
        out = root / f"{fmt}-{precision}"
        convert(str(tiny_sd1), out, fmt, precision, calibration=CalibrationSettings(size=4), progress=lambda _: None)
        folders[fmt, precision] = out
    return folders


def openvino_weight_types(path: Path) -> Counter:
    import openvino as ov

    counts: Counter = Counter()
    for op in ov.Core().read_model(path).get_ops():
        kind = op.get_type_name()
        if kind == "Constant" and math.prod(op.get_output_shape(0)) >= LARGE:
            counts[str(op.get_output_element_type(0).get_type_name())] += 1
        elif kind == "FakeQuantize":
            counts["fake_quantize"] += 1
    return counts


def onnx_weight_types(path: Path) -> Counter:
    import onnx

    model = onnx.load(str(path))
    counts = Counter(
        onnx.TensorProto.DataType.Name(t.data_type).lower()
        for t in model.graph.initializer
        if len(t.dims) >= 2 and math.prod(t.dims) >= LARGE
    )
    counts["dequantize"] = sum(node.op_type == "DequantizeLinear" for node in model.graph.node)
    return counts


@pytest.mark.parametrize("component", COMPONENTS)
def test_openvino_int8_compresses_every_large_weight(quantized, component):
    counts = openvino_weight_types(quantized["openvino", "int8"] / component / "openvino_model.xml")
    assert counts["u8"] >= 4
    assert counts["f32"] == 0, counts


@pytest.mark.parametrize("component", COMPONENTS)
def test_openvino_int4_is_4_bit_on_unet_and_text_encoder_only(quantized, component):
    counts = openvino_weight_types(quantized["openvino", "int4"] / component / "openvino_model.xml")
    assert counts["f32"] == 0, counts
    if component in ("unet", "unet_shallow", "text_encoder"):
        assert counts["i4"] >= 4, counts  # attention and feed-forward MatMuls
    else:
        assert counts["i4"] == 0 and counts["u8"] >= 4, counts


def test_openvino_hybrid_quantizes_unet_activations_only(quantized):
    folder = quantized["openvino", "int8-hybrid"]
    unet = openvino_weight_types(folder / "unet" / "openvino_model.xml")
    convolutions, calibrated = _quantized_inputs(folder / "unet" / "openvino_model.xml", "Convolution")
    # Float weights only where convolutions keep float activations (conv_in and conv_out among them).
    assert unet["fake_quantize"] >= 10 and unet["i8"] >= 10 and unet["f32"] <= len(convolutions) - len(calibrated), unet
    for component in ("text_encoder", "unet_shallow", "vae_decoder"):
        counts = openvino_weight_types(folder / component / "openvino_model.xml")
        assert counts["fake_quantize"] == 0 and counts["u8"] >= 4, counts
    calibration = Manifest.load(folder).extra["calibration"]
    assert calibration["size"] == 4 and len(calibration["prompts"]) == 8


def _quantized_inputs(path: Path, kind: str) -> tuple[list[str], list[str]]:
    """The `kind` ops of the graph, and those of them that read a FakeQuantize, by name."""
    import openvino as ov

    ops = [op for op in ov.Core().read_model(path).get_ops() if op.get_type_name() == kind]
    reads = [op for op in ops if any(v.get_node().get_type_name() == "FakeQuantize" for v in op.input_values())]
    return [op.get_friendly_name() for op in ops], [op.get_friendly_name() for op in reads]


def _fake_quantized_outputs(path: Path, kind: str) -> int:
    import openvino as ov

    graph = ov.Core().read_model(path)
    fakes = [op for op in graph.get_ops() if op.get_type_name() == "FakeQuantize"]
    return sum(op.input_value(0).get_node().get_type_name() == kind for op in fakes)


def test_openvino_hybrid_keeps_a_few_step_models_attention_and_first_and_last_convolution_float(
    quantized, tiny_sd1, tmp_path
):
    # A few-step model's 1-step image multiplies the UNet's error by about 15 (export/quantize.py HybridRecipe).
    import json
    import shutil

    source = tmp_path / "lcm"
    shutil.copytree(tiny_sd1, source)
    config = source / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"_class_name": "LCMScheduler"}))
    out = tmp_path / "out"
    calibration = CalibrationSettings(size=4)
    convert(str(source), out, "openvino", "int8-hybrid", calibration=calibration, progress=lambda _: None)
    float_convolutions = {}
    for folder, few_step in ((out, True), (quantized["openvino", "int8-hybrid"], False)):
        unet = folder / "unet" / "openvino_model.xml"
        convolutions, calibrated = _quantized_inputs(unet, "Convolution")
        assert len(calibrated) >= len(convolutions) // 2 >= 10, (len(calibrated), len(convolutions))
        float_convolutions[few_step] = {name.split("/")[0] for name in set(convolutions) - set(calibrated)}
        # NNCF's own recipe quantizes the attention's queries and keys, the outputs of their MatMuls.
        queries_and_keys = _fake_quantized_outputs(unet, "MatMul")
        assert queries_and_keys == 0 if few_step else queries_and_keys >= 2
    # Only the first and last: not the convolution before DeepCache's deep features, an inner tensor.
    assert float_convolutions[True] - float_convolutions[False] == {"__module.model.conv_in", "__module.model.conv_out"}


@pytest.mark.parametrize("component", COMPONENTS)
def test_onnx_int8_stores_int8_weights_with_dequantize(quantized, component):
    counts = onnx_weight_types(quantized["onnx", "int8"] / component / "model.onnx")
    assert counts["float"] == 0, counts
    assert counts["int8"] >= 4 and counts["int8"] == counts["dequantize"], counts


@pytest.mark.parametrize(("fmt", "precision"), CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_quantized_generation_is_deterministic_and_near_fp32(quantized, sd1_openvino, fmt, precision):
    folder = quantized[fmt, precision]
    manifest = Manifest.load(folder)
    assert manifest.precision == precision
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    pipe = Pipeline.load(folder, LoadOptions(compute_precision="f32"))
    a = pipe("a dog", steps=4, latents=latents, seed=1).array
    b = pipe("a dog", steps=4, latents=latents, seed=1).array
    reference = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))(
        "a dog", steps=4, latents=latents, seed=1
    ).array
    np.testing.assert_array_equal(a, b)
    # Loose: random tiny weights are a worst case for quantization; the demo model measures quality.
    bound = 0.1 if precision == "int8-hybrid" else 0.02
    assert 0 < float(np.abs(a - reference).mean()) < bound


def test_onnx_int8_runs_on_onnxruntime_in_a_clean_process(quantized, tmp_path):
    # The reproduction of a SIGFPE that killed the test process on an AMD Zen 5 (ONNX Runtime 1.32, the
    # int8 text encoder): run in a subprocess so that a crash by signal fails this test, not the suite.
    folder, out = quantized["onnx", "int8"], tmp_path / "ort.npy"
    script = f"""
import faulthandler, numpy as np
from sdcpu import Pipeline
from sdcpu.runtime.options import LoadOptions
faulthandler.enable()
latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
pipe = Pipeline.load({str(folder)!r}, LoadOptions(backend="onnxruntime", cache=False))
np.save({str(out)!r}, pipe("a dog", steps=4, latents=latents, seed=1).array)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ov = Pipeline.load(folder, LoadOptions(backend="openvino", compute_precision="f32"))(
        "a dog", steps=4, latents=latents, seed=1
    )
    assert float(np.abs(np.load(out) - ov.array).max()) < 1e-3


@pytest.mark.parametrize("component", COMPONENTS)
def test_onnxruntime_folds_int8_weights_into_the_fp32_graph(quantized, component, tmp_path):
    # What ONNX Runtime runs for an int8 folder is the fp32 graph: no DequantizeLinear is left at run time.
    import onnx
    import onnxruntime as ort

    from sdcpu.runtime.engines.onnxruntime import session_options

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable to save
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(quantized["onnx", "int8"] / component / "model.onnx"), options)
    kinds = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node}
    assert "DequantizeLinear" not in kinds and ("MatMul" in kinds or "Conv" in kinds), kinds


@pytest.mark.parametrize("precision", ["int4", "int8-hybrid"])
def test_precision_the_format_cannot_do_is_refused_before_work(tiny_sd1, tmp_path, precision):
    with pytest.raises(SdcpuError, match="needs --format openvino"):
        convert(str(tiny_sd1), tmp_path / "out", "onnx", precision, progress=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_chunked_attention_on_the_hybrid_unet_changes_nothing_but_slices(quantized):
    import openvino as ov

    from sdcpu.runtime.engines.passes.chunked_attention import split_queries

    path = quantized["openvino", "int8-hybrid"] / "unet" / "openvino_model.xml"
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([500.0, 500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    outputs = []
    for max_bytes in (None, 4096):  # 4 kB: every attention of the tiny UNet is sliced
        model = ov.Core().read_model(path)
        model.reshape({name: list(value.shape) for name, value in inputs.items()})
        if max_bytes is not None:
            assert split_queries(model, max_bytes) >= 4
        outputs.append(ov.Core().compile_model(model, "CPU", F32)(inputs)[0])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-5)


def test_int8_activations_are_off_unless_asked_and_recorded(quantized):
    # OpenVINO's CPU plugin turns dynamic quantization on by default where the CPU has VNNI or AMX; sdcpu pins
    # it off, so that "int8 weights" computes in float on every CPU, and turns it on only when asked.
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8), dtype=np.float32)
    results = {}
    for int8 in (False, True):
        pipe = Pipeline.load(quantized["openvino", "int8"], LoadOptions(compute_precision="f32", int8_activations=int8))
        results[int8] = pipe("a dog", steps=4, latents=latents, seed=1)
        group = pipe.unet._compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")  # type: ignore[attr-defined]
        assert group == (64 if int8 else 0)
        assert results[int8].runtime["int8_activations"] == str(int8)
    isa = " ".join(cpu_info().isa)
    if "VNNI" in isa or "AMX" in isa:
        assert float(np.abs(results[True].array - results[False].array).max()) > 0  # int8 dot products ran


def test_onnxruntime_refuses_int8_activations(quantized):
    with pytest.raises(SdcpuError, match="int8 activations need --backend openvino"):
        Pipeline.load(quantized["onnx", "int8"], LoadOptions(backend="onnxruntime", int8_activations=True))
