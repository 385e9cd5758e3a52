"""The runtime's extension points: the family and task registries, prompt embeddings as named UNet inputs
with negative and positive halves, per-step UNet hooks; and families sdcpu does not run yet, refused in
one sentence before any work, by `convert` and by `Pipeline.load`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny

from sdcpu.errors import SdcpuError
from sdcpu.format.families import family_of
from sdcpu.format.schema import TASKS as MANIFEST_TASKS
from sdcpu.models import CONVERTED
from sdcpu.runtime.components.unet import GuidedInput, UNetRunner
from sdcpu.runtime.memory import memory_policy
from sdcpu.runtime.pipelines import Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from sdcpu.runtime.tasks import TASKS, ImageToImage, TextToImage, check_task

REFINER_SENTENCE = "Stable Diffusion XL refiner models are not supported yet: sdcpu can {} Stable Diffusion 1.x and "
SDXL_REFERENCE = tiny.REFERENCE / "stable-diffusion-xl-base-1.0"


def test_every_manifest_task_has_a_task_that_runs_it():
    assert set(MANIFEST_TASKS) <= set(TASKS)
    for name, task in TASKS.items():
        assert task.name == name and task.runs_on and task.command


def test_a_model_refuses_the_tasks_it_cannot_run_naming_its_own():
    image = tiny_image()
    check_task("text-to-image", ImageToImage(image))
    with pytest.raises(SdcpuError, match="holds a model for depth-to-image; run it with `sdcpu depth2img`"):
        check_task("depth-to-image", TextToImage())
    with pytest.raises(SdcpuError, match="holds a model for upscaling; run it with `sdcpu upscale`"):
        check_task("upscaling", ImageToImage(image))


def tiny_image():
    from PIL import Image

    return Image.new("RGB", (16, 16))


def test_families_pick_their_pipeline():
    assert {"sd1", "sd2", "other", "sdxl"} <= set(Pipeline.families)
    assert {Pipeline.families[f] for f in ("sd1", "sd2", "other")} == {StableDiffusionPipeline}
    assert Pipeline.families["sdxl"] is StableDiffusionXLPipeline
    assert family_of({"cross_attention_dim": 768}) == "sd1" and family_of({"cross_attention_dim": 1024}) == "sd2"
    # SDXL's UNet by its added conditioning, whatever its text width (SSD-1B and Vega are 2048 too; a tiny one not).
    assert family_of({"cross_attention_dim": 64, "addition_embed_type": "text_time"}) == "sdxl"
    # The refiner: an aesthetic score in model_index.json, or OpenCLIP ViT-bigG's text alone.
    refiner_unet = {"cross_attention_dim": 1280, "addition_embed_type": "text_time"}
    assert family_of(refiner_unet) == "sdxl-refiner"
    assert (
        family_of({"cross_attention_dim": 64, "addition_embed_type": "text_time"}, {"requires_aesthetics_score": True})
        == "sdxl-refiner"
    )


def test_the_reference_sdxl_config_is_sdxl():
    if not SDXL_REFERENCE.exists():
        pytest.skip("the SDXL reference config is not here")
    index = json.loads((SDXL_REFERENCE / "model_index.json").read_text())
    assert family_of(json.loads((SDXL_REFERENCE / "unet" / "config.json").read_text()), index) == "sdxl"


def test_a_folder_of_an_unsupported_family_is_refused_before_any_work(tmp_path):
    folder = shutil.copytree(CONVERTED, tmp_path / "xl")
    manifest = json.loads((folder / "sdcpu.json").read_text())
    (folder / "sdcpu.json").write_text(json.dumps(manifest | {"family": "sdxl-refiner"}))
    with pytest.raises(SdcpuError) as caught:
        Pipeline.load(folder)
    assert str(caught.value).startswith(REFINER_SENTENCE.format("run")) and "\n" not in str(caught.value)


class _Echo:
    """A stand-in UNet that records its inputs and predicts 1 for the conditional rows, 0 for the others."""

    compute_precision = "f32"

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        self.calls.append(inputs)
        return inputs["encoder_hidden_states"][:, :1, :1, None] * np.ones_like(inputs["sample"])

    def release_memory(self) -> None: ...


@pytest.mark.parametrize("low_memory", [False, True])
def test_the_runner_joins_each_inputs_halves_and_adds_the_hooks_inputs(low_memory):
    unet, n = _Echo(), 2
    text = GuidedInput(np.zeros((n, 3, 4), np.float32), np.ones((n, 3, 4), np.float32))
    labels = GuidedInput.same(np.full(n, 7, np.int64))
    seen = []

    def hook(sample, t, inputs, call):
        seen.append((len(sample), t, inputs["encoder_hidden_states"][:, 0, 0].tolist()))
        # the rows of the unconditional half are told apart, whole batch or row by row
        assert call.negative.tolist() == (inputs["encoder_hidden_states"][:, 0, 0] == 0).tolist()
        assert (call.step, call.steps) == (0, 9)
        return {"extra": np.full(len(sample), t, np.float32)}

    memory = memory_policy(low_memory)
    runner = UNetRunner(
        unet, None, memory, {"encoder_hidden_states": text, "class_labels": labels}, 3.0, hooks=[hook], steps=9
    )
    eps = runner(np.zeros((n, 4, 2, 2), np.float32), t=5.0, step=0)
    np.testing.assert_array_equal(eps, np.full((n, 4, 2, 2), 3.0, np.float32))  # 0 + 3 (1 - 0)
    rows = [row for call in unet.calls for row in call["encoder_hidden_states"][:, 0, 0]]
    assert rows == [0, 0, 1, 1]  # [negative x N, positive x N]
    assert all(call["class_labels"].tolist() == [7] * len(call["sample"]) for call in unet.calls)
    assert all((call["extra"] == 5.0).all() for call in unet.calls)
    assert [s[2] for s in seen] == ([[0, 0, 1, 1]] if not low_memory else [[0.0], [0.0], [1.0], [1.0]])


def test_unguided_runs_take_the_positive_half_alone():
    unet = _Echo()
    text = GuidedInput(None, np.ones((1, 3, 4), np.float32))
    runner = UNetRunner(unet, None, memory_policy(False), {"encoder_hidden_states": text}, 1.0)
    runner(np.zeros((1, 4, 2, 2), np.float32), t=1.0, step=0)
    assert len(unet.calls) == 1 and len(unet.calls[0]["encoder_hidden_states"]) == 1
    with pytest.raises(AssertionError, match="negative half"):
        text.join(guided=True)


def _refiner_single_file(folder: Path) -> Path:
    """A single file in the refiner's layout: its one text encoder, OpenCLIP's, under conditioner.embedders.0."""
    import torch
    from safetensors.torch import save_file

    weights = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
        "conditioner.embedders.0.model.ln_final.weight": torch.zeros(32),
    }
    save_file(weights, str(folder / "refiner.safetensors"))
    return folder / "refiner.safetensors"


def _refiner_folder(folder: Path) -> Path:
    tiny.write_sdxl_folder(folder)
    shutil.rmtree(folder / "text_encoder")  # the refiner has the second encoder alone
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"requires_aesthetics_score": True}))
    return folder


@pytest.mark.parity
@pytest.mark.parametrize("source", ["tiny folder", "single file"])
def test_converting_a_refiner_is_one_clear_sentence_exit_2_and_nothing_written(source, tmp_path):
    pytest.importorskip("diffusers")
    sources = tmp_path / "sources"
    sources.mkdir()
    given = _refiner_folder(sources / "refiner") if source == "tiny folder" else _refiner_single_file(sources)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "sdcpu", "convert", str(given), str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: " + REFINER_SENTENCE.format("convert")), message
    assert "Traceback" not in result.stderr and len(message.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sources"]


@pytest.mark.parity
def test_a_refiner_hub_id_is_refused_before_its_weights_are_fetched(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import huggingface_hub

    from sdcpu.export.convert import convert
    from sdcpu.export.sources.hub import FAMILY_FILES

    folder = _refiner_folder(tmp_path / "refiner")
    asked: list[list[str]] = []

    def fake_snapshot(repo_id, allow_patterns):
        asked.append(allow_patterns)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(SdcpuError, match=REFINER_SENTENCE.format("convert")):
        convert("someone/tiny-refiner", tmp_path / "out", "onnx", progress=lambda _: None)
    assert asked == [FAMILY_FILES] and not (tmp_path / "out").exists()
