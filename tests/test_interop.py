"""Interoperability, torch-free: sdcpu's folders keep the interface optimum-intel, openvino.genai and
optimum's ONNX Runtime pipeline expect, and sdcpu runs the folders those tools export (committed
fixtures made by tools/make_interop_fixtures.py; their parity with diffusers is in test_parity.py)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import openvino as ov
import pytest
import tiny

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError, SdcpuNotice
from sdcpu.format.foreign import build_manifest
from sdcpu.format.manifest import Manifest
from sdcpu.models import CONVERTED as DEMO
from sdcpu.runtime.components.unet import unet_interfaces
from sdcpu.runtime.engines import GraphInterface, load_model
from sdcpu.runtime.options import LoadOptions

TOOLS = ["optimum-intel", "optimum-onnx"]


def _options(tmp_path, **extra) -> LoadOptions:
    return LoadOptions(compute_precision="f32", cache_dir=str(tmp_path / "cache"), **extra)


def test_the_stored_unet_has_one_output_and_an_int64_timestep():
    # What openvino.genai requires (it failed on a second output and on a float32 timestep).
    for component in ("unet", "unet_shallow"):
        model = ov.Core().read_model(str(DEMO / component / "openvino_model.xml"))
        assert [port.get_any_name() for port in model.outputs] == ["out_sample"]
        timestep = next(port for port in model.inputs if port.get_any_name() == "timestep")
        assert timestep.get_element_type() == ov.Type.i64
    assert Manifest.load(DEMO).components["unet"]["inner_outputs"] == ["deep_features"]


def test_the_runtime_exposes_deep_features_and_feeds_fractional_timesteps(tmp_path):
    manifest = Manifest.load(DEMO)
    options = _options(tmp_path).resolve(manifest)
    path = manifest.graph_path(DEMO, "unet")
    rng = np.random.default_rng(0)
    feed = {"sample": rng.standard_normal((1, 4, 8, 8), dtype=np.float32)}
    feed["encoder_hidden_states"] = rng.standard_normal((1, 16, 64), dtype=np.float32)
    stored, adapted = load_model(path, options), load_model(path, options, interface=unet_interfaces(manifest)["unet"])

    def run(model, t):
        return model.outputs(**feed, timestep=np.array([t], dtype=np.float32))

    assert len(run(stored, 500.0)) == 1 and len(run(adapted, 500.0)) == 2
    np.testing.assert_array_equal(run(stored, 500.0)[0], run(adapted, 500.0)[0])
    # The stored int64 input rounds 500.4 to 500; the runtime's float32 input keeps it.
    np.testing.assert_array_equal(run(stored, 500.4)[0], run(stored, 500.0)[0])
    assert np.abs(run(adapted, 500.4)[0] - run(adapted, 500.0)[0]).max() > 0


def test_a_missing_inner_tensor_is_a_clear_error(tmp_path):
    manifest = Manifest.load(DEMO)
    model = load_model(
        manifest.graph_path(DEMO, "vae_decoder"),
        _options(tmp_path).resolve(manifest),
        interface=GraphInterface(outputs=("deep_features",)),
    )
    with pytest.raises(SdcpuError, match="has no tensor deep_features"):
        model(latent_sample=np.zeros((1, 4, 8, 8), np.float32))


@pytest.mark.parametrize("tool", TOOLS)
def test_other_tools_exports_load_once_noted(tool, tmp_path):
    with pytest.warns(SdcpuNotice, match="no sdcpu.json: read as an? (OpenVINO|ONNX) export"):
        pipe = Pipeline.load(tiny.INTEROP / tool, _options(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kept manifest is used: no second note
        again = Pipeline.load(tiny.INTEROP / tool, _options(tmp_path))
    assert again.manifest == pipe.manifest
    m = pipe.manifest
    assert (m.format, m.precision, m.sample_size, m.vae_scale_factor) == (
        "openvino" if tool == "optimum-intel" else "onnx",
        "fp32",
        64,
        8,
    )
    assert "unet_shallow" not in m.components and "vae_encoder" in m.components
    # optimum-intel declares a timestep of shape [1] (int64), optimum's ONNX export a float scalar.
    assert m.input_shape("unet", "timestep") == ((1,) if tool == "optimum-intel" else ())
    result = pipe("a red circle", steps=4, seed=1)
    assert result.array.shape == (1, 64, 64, 3) and result.array.std() > 0.01
    with pytest.raises(SdcpuError, match="no unet_shallow, which DeepCache"):
        pipe("a red circle", steps=4, seed=1, deep_cache=2)


def test_the_two_exports_give_the_same_image(tmp_path):
    images = []
    for tool in TOOLS:
        with pytest.warns(SdcpuNotice):
            pipe = Pipeline.load(tiny.INTEROP / tool, _options(tmp_path))
        images.append(pipe("a red circle", steps=6, seed=3, scheduler="euler").array)
    assert float(np.abs(images[0] - images[1]).max()) <= 1 / 255


def test_a_changed_file_rebuilds_the_manifest(tmp_path):
    folder = shutil.copytree(tiny.INTEROP / "optimum-intel", tmp_path / "export")
    with pytest.warns(SdcpuNotice):
        Pipeline.load(folder, _options(tmp_path))
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"steps_offset": 0}))
    with pytest.warns(SdcpuNotice, match="hashed its"):
        pipe = Pipeline.load(folder, _options(tmp_path))
    assert pipe.scheduler_config.steps_offset == 0


def test_a_folder_without_graphs_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(SdcpuError, match="neither an sdcpu model folder .* nor an OpenVINO or ONNX export"):
        build_manifest(tmp_path)


def test_onnx_runtime_exposes_the_named_deep_features(sd1_onnx, tmp_path):
    # The ONNX graph keeps `out_sample` alone; ONNX Runtime gets `deep_features` by the appended output.
    manifest = Manifest.load(sd1_onnx)
    options = _options(tmp_path, backend="onnxruntime").resolve(manifest)
    path = manifest.graph_path(sd1_onnx, "unet")
    rng = np.random.default_rng(0)
    feed = {"sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32)}
    feed |= {"timestep": np.full(2, 500.5, np.float32), "encoder_hidden_states": np.ones((2, 77, 32), np.float32)}
    stored = load_model(path, options).outputs(**feed)
    adapted = load_model(path, options, interface=unet_interfaces(manifest)["unet"]).outputs(**feed)
    assert len(stored) == 1 and len(adapted) == 2 and adapted[1].shape == (2, 64, 8, 8)
    np.testing.assert_array_equal(stored[0], adapted[0])
