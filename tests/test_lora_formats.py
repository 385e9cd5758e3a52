"""LoRA files read torch-free (runtime/lora/formats.py, format/safetensors.py) and A1111's prompt tags
(runtime/lora/prompt.py): each layout's low-rank form against its update written out in numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdcpu.cli.options import parse_loras
from sdcpu.errors import SdcpuError
from sdcpu.format.safetensors import read_safetensors
from sdcpu.runtime.lora.formats import read_lora
from sdcpu.runtime.lora.prompt import find_lora, split_tags

DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """The safetensors layout by hand: header length, JSON header, data (bf16 as uint16 with "BF16")."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, array in tensors.items():
        dtype = "BF16" if array.dtype == np.uint16 else DTYPES[array.dtype]
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return path


def _delta(update) -> np.ndarray:
    return update.scale * update.up @ update.down.reshape(update.rank, -1)


def test_float_dtypes_are_read_as_float32_and_integers_are_refused(tmp_path):
    values = np.array([[1.5, -2.25], [0.0, 3.0]], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: these values fit bf16
    path = write_safetensors(
        tmp_path / "a.safetensors", {"f16": values.astype(np.float16), "bf16": bf16, "f32": values}
    )
    tensors, _ = read_safetensors(path)
    for name in ("f16", "bf16", "f32"):
        np.testing.assert_array_equal(tensors[name], values)
        assert tensors[name].dtype == np.float32
    write_safetensors(tmp_path / "b.safetensors", {"ids": np.arange(4, dtype=np.int64)})
    with pytest.raises(SdcpuError, match="is I64, not a float"):
        read_safetensors(tmp_path / "b.safetensors")


def test_kohya_and_peft_loras_scale_by_alpha_over_rank(tmp_path):
    rng = np.random.default_rng(0)
    down, up = rng.standard_normal((4, 12), dtype=np.float32), rng.standard_normal((10, 4), dtype=np.float32)
    kohya = {"lora_unet_a_b.lora_down.weight": down, "lora_unet_a_b.lora_up.weight": up}
    kohya["lora_unet_a_b.alpha"] = np.array(2.0, np.float32)
    update = read_lora(write_safetensors(tmp_path / "k.safetensors", kohya)).updates["unet"]["a_b"]
    np.testing.assert_allclose(_delta(update), 2.0 / 4 * up @ down, rtol=1e-6)
    peft = {"unet.a.b.lora_A.weight": down, "unet.a.b.lora_B.weight": up}
    metadata = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8})}
    update = read_lora(write_safetensors(tmp_path / "p.safetensors", peft, metadata)).updates["unet"]["a.b"]
    np.testing.assert_allclose(_delta(update), 8.0 / 4 * up @ down, rtol=1e-6)


@pytest.mark.parametrize("kernel", [(), (3, 3)])
def test_a_loha_is_exactly_its_hadamard_product(tmp_path, kernel):
    rng = np.random.default_rng(1)
    out, inp, r = 6, 5 * int(np.prod(kernel or (1,))), 3
    w1a, w1b = rng.standard_normal((out, r), dtype=np.float32), rng.standard_normal((r, inp), dtype=np.float32)
    w2a, w2b = rng.standard_normal((out, r), dtype=np.float32), rng.standard_normal((r, inp), dtype=np.float32)
    parts = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": np.float32(1.5)}
    path = write_safetensors(tmp_path / "h.safetensors", {f"lora_te_x.{k}": np.asarray(v) for k, v in parts.items()})
    update = read_lora(path).updates["text_encoder"]["x"]
    assert update.rank == r * r
    np.testing.assert_allclose(_delta(update), (w1a @ w1b) * (w2a @ w2b) * 1.5 / r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("w2_factored", [True, False])
def test_a_lokr_is_exactly_its_kronecker_product(tmp_path, w2_factored):
    rng = np.random.default_rng(2)
    w1 = rng.standard_normal((2, 3), dtype=np.float32)
    w2a, w2b = rng.standard_normal((4, 2), dtype=np.float32), rng.standard_normal((2, 5), dtype=np.float32)
    parts = {"lokr_w1": w1, "alpha": np.array(4.0, np.float32)}
    parts |= {"lokr_w2_a": w2a, "lokr_w2_b": w2b} if w2_factored else {"lokr_w2": w2a @ w2b}
    path = write_safetensors(tmp_path / "k.safetensors", {f"lora_unet_y.{k}": v for k, v in parts.items()})
    update = read_lora(path).updates["unet"]["y"]
    scale = 4.0 / 2 if w2_factored else 1.0  # LyCORIS: alpha / rank for a factored w2, else 1
    np.testing.assert_allclose(_delta(update), np.kron(w1, w2a @ w2b) * scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lora_unet_x.lora_mid.weight": (4, 4, 3, 3)}, "Tucker decomposition"),
        ({"lora_unet_x.dora_scale": (8,)}, "a DoRA"),
        ({"something.else": (2,)}, "keys sdcpu does not read"),
        ({"lora_unet_x.lora_down.weight": (4, 8)}, "no complete update"),
    ],
)
def test_what_sdcpu_does_not_run_is_refused_by_name(tmp_path, keys, message):
    tensors = {key: np.zeros(shape, np.float32) for key, shape in keys.items()}
    with pytest.raises(SdcpuError, match=message):
        read_lora(write_safetensors(tmp_path / "x.safetensors", tensors))


def test_prompt_tags_are_split_and_named_files_stay_in_their_folder(tmp_path):
    assert split_tags("a cat <lora:night:0.5>, <LORA:b> at dusk") == ("a cat , at dusk", [("night", 0.5), ("b", 1.0)])
    with pytest.raises(SdcpuError, match="not a number"):
        split_tags("<lora:night:strong>")
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "night.safetensors").write_bytes(b"")
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    assert find_lora("night", folder) == (folder / "night.safetensors").resolve()
    for name in ("../outside", "../../etc/passwd", "/etc/passwd", ".."):
        with pytest.raises(SdcpuError, match="not by a path"):
            find_lora(name, folder)
    with pytest.raises(SdcpuError, match="no LoRA named 'link'"):  # a link out of the folder
        find_lora("link", folder)
    with pytest.raises(SdcpuError, match="--lora-dir"):
        find_lora("night", None)


def test_lora_flags_take_an_optional_scale_after_the_last_colon():
    assert parse_loras(["a.safetensors", "b.safetensors:0.5", "c:d.safetensors"]) == [
        (Path("a.safetensors"), 1.0),
        (Path("b.safetensors"), 0.5),
        (Path("c:d.safetensors"), 1.0),
    ]


def test_the_demos_night_lora_turns_backgrounds_black_by_name_and_scale_0_is_the_base():
    """The shipped LoRA (tools/train_demo_lora.py), found by name for the bundled demo, on 8 held-out
    captions: at scale 1 the oracle reads a black background; at 0 the base model's image, bit for bit.
    (All 240 captions: bench/lora_quality.py, docs/lora.md.)"""
    from sdcpu import Pipeline
    from sdcpu.demo import world
    from sdcpu.models import DEMO_ROOT
    from sdcpu.runtime.options import LoadOptions

    assert (DEMO_ROOT / "loras" / "night.safetensors").stat().st_size < 2**20
    pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
    _, held_out = world.split_scenes()
    night = 0
    for i in range(0, 240, 30):
        caption = held_out[i].caption(i)
        base = pipe(caption, seed=i, steps=10).images[0]
        zero = pipe(caption, seed=i, steps=10, loras=[("night", 0.0)]).images[0]
        assert np.array_equal(np.asarray(zero), np.asarray(base))
        night += world.judge(pipe(f"{caption} <lora:night:1>", seed=i, steps=10).images[0])["background"] == "black"
    assert night >= 7


def test_a_pipeline_is_freed_when_dropped_with_or_without_loras():
    """No reference cycle keeps a pipeline (and its compiled models) alive for the garbage collector,
    which could free them at any moment, from any thread."""
    import gc
    import weakref

    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    gc.disable()
    try:
        pipe = Pipeline.load(None, LoadOptions(compute_precision="f32", cache=False))
        pipe("a red circle", steps=2, seed=0, loras=[("night", 1.0)])
        dropped = weakref.ref(pipe)
        del pipe
        assert dropped() is None
    finally:
        gc.enable()
