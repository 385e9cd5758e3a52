"""The Python API: callbacks, backends across formats, devices, hub ids."""

from __future__ import annotations

import numpy as np
import pytest

from sdcpu import Pipeline, SdcpuError
from sdcpu.runtime.options import LoadOptions


def test_callback_sees_every_step_and_can_stop(sd1_openvino):
    pipe = Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))
    seen = []
    result = pipe("a cat", steps=5, scheduler="ddim", seed=1, callback=lambda i, n, x: seen.append((i, n, x.shape)))
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5] and seen[0][1:] == (5, (1, 4, 8, 8))
    assert result.completed_steps == 5
    stopped = pipe("a cat", steps=5, scheduler="ddim", seed=1, callback=lambda i, n, x: i < 2)
    assert stopped.completed_steps == 2 and len(stopped.images) == 1


def test_openvino_reads_the_onnx_folder_too(sd1_onnx):
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    a = Pipeline.load(sd1_onnx, LoadOptions(backend="openvino", compute_precision="f32"))(
        "a cat", steps=3, latents=latents, seed=0
    ).array
    b = Pipeline.load(sd1_onnx, LoadOptions(backend="onnxruntime", compute_precision="f32"))(
        "a cat", steps=3, latents=latents, seed=0
    ).array
    assert float(np.abs(a - b).max()) <= 2 / 255


def test_onnxruntime_cannot_read_ir_and_unknown_device_is_refused(sd1_openvino, sd1_onnx):
    with pytest.raises(SdcpuError, match="--backend openvino"):
        Pipeline.load(sd1_openvino, LoadOptions(backend="onnxruntime", compute_precision="f32"))
    with pytest.raises(SdcpuError, match="CPU only"):
        Pipeline.load(sd1_onnx, LoadOptions(backend="onnxruntime", device="GPU", compute_precision="f32"))
    with pytest.raises(SdcpuError, match="has no device"):
        Pipeline.load(sd1_openvino, LoadOptions(device="NO_SUCH_DEVICE", compute_precision="f32"))("a cat", steps=1)


def test_latents_of_the_wrong_shape_are_refused(sd1_openvino):
    with pytest.raises(SdcpuError, match="latents must have shape"):
        Pipeline.load(sd1_openvino, LoadOptions(compute_precision="f32"))(
            "a cat", steps=1, latents=np.zeros((1, 4, 4, 4), np.float32)
        )


@pytest.mark.slow
def test_hub_id_is_fetched_as_safetensors_only(tiny_sd1, tmp_path, monkeypatch):
    import huggingface_hub

    from sdcpu.export.convert import convert

    asked = {}

    def fake_snapshot(repo_id, allow_patterns):
        asked.update(repo=repo_id, patterns=allow_patterns)
        return str(tiny_sd1)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    manifest = convert("someone/tiny-sd", tmp_path / "out", "onnx", progress=lambda _: None)  # the format is not tested
    assert asked["repo"] == "someone/tiny-sd" and manifest.source == "someone/tiny-sd"
    assert not any(p.endswith((".bin", ".ckpt", ".pt")) for p in asked["patterns"])
