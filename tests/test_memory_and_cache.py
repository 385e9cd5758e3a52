"""--low-memory (one network at a time, batch-1 guidance, tiled decode) and the compile cache."""

from __future__ import annotations

import mmap
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdcpu import Pipeline
from sdcpu.errors import SdcpuError
from sdcpu.runtime.components.tiling import decode_tiled, tile_starts
from sdcpu.runtime.engines import load_model
from sdcpu.runtime.engines.pages import drop_mapped_pages, dropping_mapped_pages
from sdcpu.runtime.options import LoadOptions


def _upsample(scale: int):
    # A pointwise "decoder": each latent pixel becomes a scale x scale block of its first three channels.
    return lambda z: np.repeat(np.repeat(z[:, :3], scale, axis=2), scale, axis=3)


def test_tiles_cover_the_image_and_share_the_overlap():
    assert tile_starts(16, 32, 8) == [0]
    assert tile_starts(64, 40, 8) == [0, 24]  # SD at 512x512: 2 tiles a side
    assert tile_starts(96, 40, 8) == [0, 28, 56]
    assert tile_starts(64, 32, 8) == [0, 16, 32]


@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (2, 4, 40, 72)])
def test_tiled_decode_of_a_pointwise_decoder_is_exact(shape):
    # With a decoder that has no receptive field, every tile agrees where tiles overlap, so the blend
    # must give back exactly the whole-image decode: this checks placement and weights, not the VAE.
    latents = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    whole = _upsample(8)(latents)
    tiled = decode_tiled(_upsample(8), latents, 8, tile=32, overlap=8)
    assert tiled.shape == whole.shape
    np.testing.assert_allclose(tiled, whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("converted", ["openvino", "onnx"], indirect=True)
def test_low_memory_gives_the_same_image(converted):
    # At 64x64 the latents fit in one tile, so only batch-1 guidance and releasing networks differ.
    normal = Pipeline.load(converted, LoadOptions(compute_precision="f32"))("a cat", steps=4, seed=3).array
    low = Pipeline.load(converted, LoadOptions(low_memory=True, compute_precision="f32"))
    first, second = low("a cat", steps=4, seed=3).array, low("a cat", steps=4, seed=3).array
    np.testing.assert_allclose(first, normal, atol=1e-5)
    np.testing.assert_array_equal(first, second)  # released networks load again, identically


class _Spy:
    """Records the shape of each decoder call and passes it on."""

    def __init__(self, model):
        self.model, self.shapes = model, []

    def __call__(self, **inputs):
        self.shapes.append(inputs["latent_sample"].shape)
        return self.model(**inputs)

    @property
    def compute_precision(self):
        return self.model.compute_precision

    def release_memory(self):
        self.model.release_memory()

    def release(self):
        self.model.release()


def test_low_memory_decodes_large_images_in_tiles(sd1_openvino):
    pipe = Pipeline.load(sd1_openvino, LoadOptions(low_memory=True, compute_precision="f32"))
    pipe.vae_decoder = spy = _Spy(pipe.vae_decoder)
    result = pipe("a cat", steps=2, seed=0, width=384, height=320)
    assert result.array.shape == (1, 320, 384, 3)
    assert spy.shapes == [(1, 4, 40, 40)] * 2  # 48x40 latents: two 40x40 tiles sharing 32 columns


def test_compiled_models_are_cached_and_reused(sd1_openvino, tmp_path):
    first = Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
        "a cat", steps=2, seed=0
    ).array
    blobs = sorted(tmp_path.glob("*.blob"))
    assert len(blobs) >= 3  # text encoder, UNet, VAE decoder
    second = Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
        "a cat", steps=2, seed=0
    ).array
    assert sorted(tmp_path.glob("*.blob")) == blobs  # imported, not compiled again
    np.testing.assert_array_equal(first, second)
    none = Pipeline.load(sd1_openvino, LoadOptions(cache=False, compute_precision="f32"))
    assert none.unet._cache is None  # type: ignore[attr-defined]


def test_a_warm_start_imports_and_a_damaged_blob_is_compiled_again(sd1_openvino, tmp_path, monkeypatch):
    from sdcpu.runtime.engines.openvino import OpenVINOModel

    first = Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
        "a cat", steps=2, seed=0
    ).array
    compile_graph = OpenVINOModel._compile_graph
    monkeypatch.setattr(OpenVINOModel, "_compile_graph", lambda *_: pytest.fail("compiled on a warm start"))
    np.testing.assert_array_equal(
        Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
            "a cat", steps=2, seed=0
        ).array,
        first,
    )
    blob = max(tmp_path.glob("*.blob"), key=lambda b: b.stat().st_size)
    size = blob.stat().st_size
    blob.write_bytes(blob.read_bytes()[: size // 2])
    compiled: list[str] = []
    monkeypatch.setattr(
        OpenVINOModel,
        "_compile_graph",
        lambda m, *a, **k: compiled.append(m.path.parent.name) or compile_graph(m, *a, **k),
    )
    np.testing.assert_array_equal(
        Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
            "a cat", steps=2, seed=0
        ).array,
        first,
    )
    assert len(compiled) == 1 and blob.stat().st_size > 0.9 * size  # compiled again, a whole blob written
    assert not list(tmp_path.glob("*.partial"))


def test_devices_that_cannot_export_use_openvinos_cache_dir(sd1_openvino, tmp_path, monkeypatch):
    from sdcpu.runtime.engines.compiled_cache import CompiledModelCache

    monkeypatch.setattr(CompiledModelCache, "can_export", lambda self, device: False)  # as for AUTO
    first = Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
        "a cat", steps=2, seed=0
    ).array
    blobs = sorted(tmp_path.glob("*.blob"))
    assert len(blobs) >= 3 and all(b.stem.isdigit() for b in blobs)  # OpenVINO's own names
    second = Pipeline.load(sd1_openvino, LoadOptions(cache_dir=tmp_path, compute_precision="f32"))(
        "a cat", steps=2, seed=0
    ).array
    assert sorted(tmp_path.glob("*.blob")) == blobs
    np.testing.assert_array_equal(first, second)


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(sd1_openvino, tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    with pytest.raises(SdcpuError, match="cannot write to the cache folder .*--no-cache"):
        Pipeline.load(
            sd1_openvino, LoadOptions(cache_dir=not_a_folder, compute_precision="f32")
        )  # the record of verified hashes
    options = LoadOptions(backend="openvino", compute_precision="f32", cache_dir=not_a_folder / "blobs")
    model = load_model(sd1_openvino / "vae_decoder" / "openvino_model.xml", options)
    with pytest.raises(SdcpuError, match="cannot write to the cache folder .*--no-cache"):
        model(latent_sample=np.zeros((1, 4, 8, 8), dtype=np.float32))  # the compiled model's blob
    assert not_a_folder.read_text() == "a file"


def test_verified_hashes_are_recorded_and_rechecked_when_a_file_changes(sd1_openvino, tmp_path, monkeypatch):
    import sdcpu.format.manifest as manifest_module

    folder, record = tmp_path / "model", tmp_path / "cache" / "verified-files.json"
    shutil.copytree(sd1_openvino, folder)
    manifest = manifest_module.Manifest.load(folder)
    hashed: list[str] = []
    real_sha256 = manifest_module.sha256_file
    monkeypatch.setattr(manifest_module, "sha256_file", lambda p: hashed.append(p.name) or real_sha256(p))
    manifest.verify(folder, record=record)
    assert len(hashed) == len(manifest.files) and record.is_file()
    hashed.clear()
    written = record.stat().st_mtime_ns
    manifest.verify(folder, record=record)
    assert hashed == []  # unchanged files: taken from the record
    assert record.stat().st_mtime_ns == written  # and the record is not rewritten
    weights = folder / "unet" / "openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, new mtime
    with pytest.raises(SdcpuError, match="sha256"):
        manifest.verify(folder, record=record)
    assert hashed == ["openvino_model.bin"]


def _resident_kb(path) -> int:
    # Sum of the Rss lines of this process's mappings of `path`, from /proc/self/smaps.
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields[0].endswith(":"):
            total += int(fields[1]) if fields[0] == "Rss:" and current == str(path) else 0
        else:
            current = fields[5] if len(fields) > 5 else None
    return total


@pytest.mark.skipif(sys.platform != "linux", reason="dropping mapped pages is done on Linux only")
def test_dropped_pages_leave_the_resident_set_and_read_back_unchanged(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "weights.bin").write_bytes(data)
    with open(tmp_path / "weights.bin", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert mapped[:] == data  # every page read, so resident
        assert _resident_kb(tmp_path / "weights.bin") >= 8 << 10
        assert drop_mapped_pages(tmp_path) >= len(data)
        assert _resident_kb(tmp_path / "weights.bin") == 0
        assert mapped[:] == data


def test_pages_are_dropped_while_a_block_reads_them(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "model.blob").write_bytes(data)
    with open(tmp_path / "model.blob", "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with dropping_mapped_pages(tmp_path, interval_s=0.01):
            assert mapped[:] == data  # every page read, as an import reads the blob
            deadline = time.monotonic() + 5
            while _resident_kb(tmp_path / "model.blob") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _resident_kb(tmp_path / "model.blob") == 0  # dropped before the block ends
        assert mapped[:] == data


class _Recorder:
    """Passes calls on to a model and logs (name, what) for each."""

    def __init__(self, model, name, log):
        self.model, self.name, self.log = model, name, log

    def __call__(self, **inputs):
        self.log.append((self.name, "call"))
        return self.model(**inputs)

    @property
    def compute_precision(self):
        return self.model.compute_precision

    def release_memory(self):
        self.log.append((self.name, "release_memory"))
        self.model.release_memory()

    def release(self):
        self.log.append((self.name, "release"))
        self.model.release()


@pytest.mark.parametrize("low_memory", [False, True])
def test_each_network_frees_its_memory_when_its_phase_ends(sd1_openvino, low_memory):
    pipe, log = Pipeline.load(sd1_openvino, LoadOptions(low_memory=low_memory, compute_precision="f32")), []
    for name in ("text_encoder", "unet", "vae_decoder"):
        setattr(pipe, name, _Recorder(getattr(pipe, name), name, log))
    prompts = ("a cat", "a cat", "a dog")
    first, second, _ = (pipe(prompt, steps=2, seed=5, scheduler="ddim").array for prompt in prompts)
    free = "release" if low_memory else "release_memory"  # default: the compiled weights stay
    calls = 2 if low_memory else 1  # --low-memory runs guidance as two batch-1 UNet calls
    encode = [("text_encoder", "call"), ("text_encoder", free)]
    denoise = [("unet", "call")] * 2 * calls + [("unet", free), ("vae_decoder", "call"), ("vae_decoder", free)]
    # The second image asks for the first's prompts: their encoding is kept, the text encoder not run.
    assert log == encode + denoise + denoise + encode + denoise
    np.testing.assert_array_equal(first, second)


@pytest.mark.unit
def test_the_cache_is_trimmed_to_its_limit_least_recently_used_first(tmp_path, monkeypatch):
    import os

    from sdcpu.cache import cache_limit, trim_blobs

    blobs = []
    for i in range(5):  # 1 MB each, used in this order (the last most recently)
        blob = tmp_path / f"{i}.blob"
        blob.write_bytes(b"\0" * 2**20)
        os.utime(blob, ns=(i * 10**9, i * 10**9))
        blobs.append(blob)
    (tmp_path / "verified-files.json").write_text("{}")  # not a blob: never trimmed
    removed = trim_blobs(tmp_path, keep=blobs[0], limit=int(2.5 * 2**20))
    assert removed == blobs[1:4]  # the oldest but the one just written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.blob", "4.blob", "verified-files.json"]
    monkeypatch.setenv("SDCPU_CACHE_MAX_GB", "0.5")
    assert cache_limit() == 2**29
    monkeypatch.setenv("SDCPU_CACHE_MAX_GB", "lots")
    with pytest.raises(SdcpuError, match="SDCPU_CACHE_MAX_GB must be a number"):
        cache_limit()
