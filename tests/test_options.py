"""Load options, graph passes, memory policies and the manifest version: torch-free unit tests on the
bundled demo model's manifest."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import MANIFEST_VERSION, Manifest
from sdcpu.models import CONVERTED
from sdcpu.runtime import precision
from sdcpu.runtime.engines.passes.registry import (
    chunked_attention,
    graph_passes,
    token_downsampling,
    upsampling_convolutions,
    winograd,
)
from sdcpu.runtime.memory import LowMemory, Resident, memory_policy
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.precision import CpuInfo

MANIFEST = Manifest.load(CONVERTED)
ONNX = replace(MANIFEST, format="onnx")


def test_resolve_names_the_backend_and_decides_every_auto(monkeypatch):
    monkeypatch.setattr(precision, "openvino_capabilities", lambda device: ("FP32", "BF16"))
    resolved = LoadOptions().resolve(MANIFEST)
    assert (resolved.backend, resolved.compute_precision, resolved.int8_activations) == ("openvino", "bf16", False)
    assert resolved.winograd is False  # bf16 runs direct convolutions
    assert LoadOptions(compute_precision="f32").resolve(MANIFEST).winograd is True
    assert LoadOptions(compute_precision="f32", low_memory=True).resolve(MANIFEST).winograd is False
    assert LoadOptions().resolve(ONNX).backend == "onnxruntime"
    assert LoadOptions().resolve(ONNX).compute_precision == "f32"
    # Another OpenVINO device keeps its own default precision.
    assert LoadOptions(device="GPU").resolve(MANIFEST).compute_precision == "auto"


@pytest.mark.parametrize(
    "options, manifest, message",
    [
        (LoadOptions(backend="tensorrt"), MANIFEST, "unknown backend 'tensorrt'"),
        (LoadOptions(backend="onnxruntime"), MANIFEST, "onnxruntime cannot read a openvino folder"),
        (LoadOptions(device="GPU"), ONNX, "CPU only"),
        (LoadOptions(token_downsampling=0), MANIFEST, "token_downsampling must be at least 1"),
        (LoadOptions(token_downsampling=2), ONNX, "token downsampling needs an OpenVINO folder"),
        (LoadOptions(compute_precision="fp64"), MANIFEST, "unknown compute precision"),
        (LoadOptions(compute_precision="bf16"), ONNX, "computes in f32 only"),
        (LoadOptions(int8_activations=True), ONNX, "int8 activations need --backend openvino"),
    ],
)
def test_options_a_folder_cannot_run_are_refused(options, manifest, message):
    with pytest.raises(SdcpuError, match=message):
        options.resolve(manifest)


def test_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path / "env"))
    assert LoadOptions().cache_folder() == tmp_path / "env"
    assert LoadOptions(cache_dir=tmp_path / "mine").cache_folder() == tmp_path / "mine"
    assert LoadOptions(cache=False, cache_dir=tmp_path).cache_folder() is None


def test_each_pass_says_what_it_applies_to():
    assert winograd().applies_to("unet", "fp32", "CPU") and winograd().applies_to("unet_shallow", "int8", "cpu")
    assert not winograd().applies_to("vae_decoder", "fp32", "CPU") and not winograd().applies_to("unet", "fp32", "GPU")
    assert chunked_attention().applies_to("unet", "int8-hybrid", "CPU")
    # The shallow UNet of an int8-hybrid folder is int8 (no FakeQuantize): nothing to chunk.
    assert not chunked_attention().applies_to("unet_shallow", "int8", "CPU")
    assert not chunked_attention().applies_to("unet", "fp32", "CPU")
    decoders = ("vae_decoder", "tiny_vae_decoder")
    assert all(upsampling_convolutions().applies_to(c, "fp16", "CPU") for c in ("unet", *decoders))
    assert not upsampling_convolutions().applies_to("vae_encoder", "fp32", "CPU")
    assert token_downsampling(2).applies_to("unet", "fp32", "GPU") and not token_downsampling(2).exact
    assert token_downsampling(2).key != token_downsampling(3).key


@pytest.mark.parametrize("isa, chunked", [(("AVX2", "FMA"), ["chunked-attention"]), (("AVX2", "FMA", "AVX-512"), [])])
def test_passes_follow_the_options_in_order(monkeypatch, isa, chunked):
    # Attention is chunked only where OpenVINO splits it into separate nodes: on CPUs without AVX-512.
    monkeypatch.setattr(precision, "cpu_info", lambda: CpuInfo("a CPU", 2, isa))
    keys = lambda options: [p.name for p in graph_passes(options.resolve(MANIFEST))]  # noqa: E731
    up = "upsampling-convolutions"
    assert keys(LoadOptions(compute_precision="f32")) == ["winograd", up, *chunked]
    f32_todo = LoadOptions(compute_precision="f32", token_downsampling=2)
    assert keys(f32_todo) == ["winograd", up, "token-downsampling-2", *chunked]
    assert keys(LoadOptions(compute_precision="f32", winograd=False)) == [up, *chunked]
    assert graph_passes(LoadOptions().resolve(ONNX)) == ()


class _Recorder:
    compute_precision = "f32"

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, **inputs):
        self.calls.append("call")
        return inputs["latent_sample"][:, :3].repeat(8, axis=2).repeat(8, axis=3)

    def release_memory(self):
        self.calls.append("release_memory")

    def release(self):
        self.calls.append("release")


def test_memory_policies():
    assert isinstance(memory_policy(False), Resident) and isinstance(memory_policy(True), LowMemory)
    assert Resident().batches(2) == [slice(None)] and LowMemory().batches(2) == [slice(0, 1), slice(1, 2)]
    for policy, freed in ((Resident(), "release_memory"), (LowMemory(), "release")):
        model = _Recorder()
        policy.free(model)
        assert model.calls == [freed]
    model, latents = _Recorder(), np.zeros((1, 4, 64, 64), np.float32)
    assert LowMemory().decode(model, latents, 8).shape == (1, 3, 512, 512) and model.calls.count("call") == 4


def test_the_pipeline_records_its_load_options(monkeypatch):
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False, token_downsampling=2))
    info = pipe.runtime_info()
    assert info["compute_precision_requested"] == "f32" and info["token_downsampling"] == "2"
    assert info["memory"] == "resident" and info["backend"] == "openvino" and info["verify"] == "fast"
    unet = "winograd r2, upsampling-convolutions r1, token-downsampling-2 r1"
    expected = f"unet: {unet}; unet_shallow: {unet}; vae_decoder: upsampling-convolutions r1"
    assert info["graph_passes"] == expected


@pytest.mark.parametrize("version, message", [(1, "older sdcpu .* convert the checkpoint again"), (99, "newer sdcpu")])
def test_folders_of_another_manifest_version_are_refused(tmp_path, version, message):
    folder = tmp_path / "model"
    shutil.copytree(CONVERTED, folder)
    data = json.loads((folder / "sdcpu.json").read_text())
    assert data["sdcpu_manifest"] == MANIFEST_VERSION
    (folder / "sdcpu.json").write_text(json.dumps({**data, "sdcpu_manifest": version}))
    with pytest.raises(SdcpuError, match=message):
        Manifest.load(folder)


def test_version_3_folders_load_as_text_to_image(tmp_path):
    """Version 3 had no `task`: such folders are text-to-image models, and still load."""
    folder = tmp_path / "model"
    shutil.copytree(CONVERTED, folder)
    data = json.loads((folder / "sdcpu.json").read_text())
    del data["task"]
    (folder / "sdcpu.json").write_text(json.dumps({**data, "sdcpu_manifest": 3}))
    assert Manifest.load(folder).task == "text-to-image"
    (folder / "sdcpu.json").write_text(json.dumps({**data, "task": "colouring-in"}))
    with pytest.raises(SdcpuError, match="unknown task 'colouring-in'"):
        Manifest.load(folder)
