"""Faults inside a run and fuzzed files: the bf16 -> f32 retry, outputs and the umask, and property-based
fuzzing of the manifest loader and the safetensors header checks (every input is either accepted or
refused with SdcpuError, never another exception)."""

from __future__ import annotations

import contextlib
import json
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import MANIFEST_VERSION, Manifest
from sdcpu.format.safetensors import HeaderError, check_header, check_safetensors
from sdcpu.runtime.engines.fallback import RetryAtF32
from sdcpu.runtime.io.outputs import umask
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class _Fake:
    def __init__(self, value: float, precision: str):
        self.value, self.compute_precision, self.calls, self.released = value, precision, 0, False

    def __call__(self, **inputs):
        self.calls += 1
        return np.full((1, 4), self.value, np.float32)

    def outputs(self, **inputs):
        return [self(**inputs)]

    def release_memory(self):
        pass

    def release(self):
        self.released = True


def test_a_bf16_network_that_gives_nan_runs_again_at_f32_and_stays_there():
    bf16, f32 = _Fake(np.nan, "bf16"), _Fake(1.0, "f32")
    told: list[str] = []
    model = RetryAtF32(bf16, lambda: f32, "unet", told.append)
    with pytest.warns(UserWarning, match="the unet gave NaN or Inf at bf16; it runs at f32 from now on"):
        assert model(x=np.zeros(1)).tolist() == [[1.0] * 4]
    assert model.fell_back and bf16.released and model.compute_precision == "f32" and told == ["unet"]
    assert model.outputs(x=np.zeros(1))[0].tolist() == [[1.0] * 4] and (bf16.calls, f32.calls) == (1, 2)
    finite = RetryAtF32(
        _Fake(2.0, "bf16"), lambda: pytest.fail("no retry for finite output"), "vae_decoder", told.append
    )
    assert finite(x=np.zeros(1))[0, 0] == 2.0 and not finite.fell_back


def test_the_pipeline_records_a_network_that_fell_back():
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
    expected = pipe("a red circle", seed=0, steps=4).array
    nan_unet = _Fake(np.nan, "bf16")
    nan_unet.outputs = lambda **inputs: [np.full((2, 4, 16, 16), np.nan, np.float32)]  # type: ignore[method-assign]
    real = pipe.unet
    pipe.unet = RetryAtF32(nan_unet, lambda: real, "unet", pipe.fell_back.append)  # type: ignore[assignment]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pipe("a red circle", seed=0, steps=4)
    np.testing.assert_array_equal(result.array, expected)
    assert result.runtime["fell_back_to_f32"] == "unet" and any("unet gave NaN" in str(w.message) for w in caught)


def test_saved_pngs_follow_the_umask_and_keep_existing_files(tmp_path):
    result = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))("a red circle", steps=2, seed=0)
    (path,) = result.save(tmp_path / "a.png")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask()
    with pytest.raises(SdcpuError, match="exists; pass --overwrite"):
        result.save(path)
    assert result.save(path, overwrite=True) == [path]


# JSON values, nested a little: what a damaged or hand-edited manifest may hold.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(data=JSON)
def test_fuzzed_manifests_load_or_are_refused(tmp_path, data):
    (tmp_path / "sdcpu.json").write_text(json.dumps(data))
    with contextlib.suppress(SdcpuError):  # refused clearly, or loaded: anything else fails the test
        Manifest.load(tmp_path)


@FUZZ
@given(field=st.sampled_from(["files", "components", "format", "sample_size", "vae_scaling_factor"]), value=JSON)
def test_manifests_with_one_field_fuzzed_load_or_are_refused(tmp_path, field, value):
    from sdcpu.models import CONVERTED

    data = json.loads((CONVERTED / "sdcpu.json").read_text())
    data[field] = value
    (tmp_path / "sdcpu.json").write_text(json.dumps(data))
    try:
        manifest = Manifest.load(tmp_path)
    except SdcpuError:
        return
    assert data["sdcpu_manifest"] == MANIFEST_VERSION and manifest.format in ("openvino", "onnx")


TENSOR = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "I8", "F7", 3]),
        "shape": st.lists(st.integers(-2, 4), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3) | JSON,
    }
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=5), TENSOR | JSON, max_size=4), data_bytes=st.integers(0, 80))
def test_fuzzed_safetensors_headers_are_accepted_only_when_consistent(header, data_bytes):
    try:
        parsed = check_header(json.dumps(header).encode(), data_bytes)
    except HeaderError:
        return
    spans = sorted(tuple(t["data_offsets"]) for t in parsed.values())
    assert sum(end - begin for begin, end in spans) == data_bytes  # every byte claimed exactly once


@FUZZ
@given(raw=st.binary(max_size=64))
def test_fuzzed_safetensors_files_are_refused_with_a_clear_error(tmp_path, raw):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    try:
        check_safetensors(path)
    except SdcpuError as err:
        assert str(path) in str(err)


def test_a_well_formed_file_passes(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "ok.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    check_safetensors(tmp_path / "ok.safetensors")
