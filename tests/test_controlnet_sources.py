"""ControlNets from single .safetensors files (ControlNet v1.1's original layout, or diffusers' names) and
from hub ids: the config read from the weights' shapes, and the converted network against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ldm_checkpoint import controlnet_to_ldm
from tiny import REFERENCE

from sdcpu.errors import SdcpuError

pytestmark = pytest.mark.parity

UNET_FIELDS = [
    "in_channels",
    "block_out_channels",
    "down_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
    "use_linear_projection",
    "transformer_layers_per_block",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
]
# Tiny ControlNets whose heads follow the originals' rule (8 at SD 1.x's text width, else 64 channels each)
TINY = {
    "sd1": {"block_out_channels": (32, 64), "cross_attention_dim": 768, "attention_head_dim": 8},
    "sd2": {
        "block_out_channels": (64, 128),
        "cross_attention_dim": 1024,
        "attention_head_dim": (1, 2),
        "use_linear_projection": True,
    },
    "sdxl": {
        "block_out_channels": (64, 128),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "cross_attention_dim": 96,
        "attention_head_dim": (1, 2),
        "transformer_layers_per_block": (1, 2),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 32 + 6 * 256,
    },
}


def _structure(model) -> tuple[dict, list[int]]:
    from diffusers.models.attention_processor import Attention

    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return shapes, [module.heads for module in model.modules() if isinstance(module, Attention)]


@pytest.mark.parametrize("reference", ["stable-diffusion-v1-4", "stable-diffusion-2-1", "stable-diffusion-xl-base-1.0"])
def test_the_config_read_from_shapes_builds_the_real_architectures(reference):
    """SD 1.x's, SD 2.x's and SDXL's ControlNet, as diffusers' `from_unet` makes them from the real UNet
    configs, built again from their weights' shapes alone: the same tensors and the same heads."""
    torch = pytest.importorskip("torch")
    from diffusers import ControlNetModel

    from sdcpu.export.controlnet_sources import controlnet_config

    path = REFERENCE / reference / "unet" / "config.json"
    if not path.is_file():
        pytest.skip("reference configs not present")
    unet = json.loads(path.read_text())
    with torch.device("meta"):
        real = ControlNetModel(**{key: unet[key] for key in UNET_FIELDS if key in unet})
        shapes, heads = _structure(real)
        rebuilt = ControlNetModel.from_config(controlnet_config(shapes))
    assert _structure(rebuilt) == (shapes, heads)


def _tiny_controlnet(kind: str):
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    model = ControlNetModel(
        **{"layers_per_block": 1, "conditioning_embedding_out_channels": (8, 8, 16, 16)},
        **{"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), **TINY[kind]},
    )
    with torch.no_grad():  # random outputs, where training starts them at zero
        for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
            conv.weight.normal_(0, 0.1)
    return model.eval()


def _outputs(folder: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "controlnet" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.mark.parametrize("kind, layout", [("sd1", "original"), ("sd2", "original-bare-fp16"), ("sdxl", "diffusers")])
def test_a_single_file_controlnet_converts_and_matches_pytorch(kind, layout, tmp_path):
    """A ControlNet v1.1 file (cldm's `control_model.` names; or bare, in fp16, as A1111 users keep them)
    or a diffusers-named file converts with no config, and its graph matches the PyTorch model."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from sdcpu.export.convert import convert

    model = _tiny_controlnet(kind)
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    if layout.startswith("original"):
        state = controlnet_to_ldm(state, dict(model.config), "" if "bare" in layout else "control_model.")
    if layout.endswith("fp16"):
        state = {key: value.half() for key, value in state.items()}
        with torch.no_grad():  # the reference holds the same rounded weights
            for tensor in model.state_dict().values():
                tensor.copy_(tensor.half().float())
    save_file(state, tmp_path / f"control_tiny_{kind}.safetensors")
    manifest = convert(str(tmp_path / f"control_tiny_{kind}.safetensors"), tmp_path / "out", "onnx", progress=print)
    assert manifest.family == kind and manifest.source.endswith(".safetensors")

    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
        "timestep": np.array([500.0, 500.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 5, model.config.cross_attention_dim), dtype=np.float32),
        "controlnet_cond": rng.random((2, 3, 64, 64), dtype=np.float32),
    }
    added = {}
    if kind == "sdxl":
        added = {"text_embeds": rng.standard_normal((2, 32), dtype=np.float32)}
        added["time_ids"] = np.array([[64.0, 64, 0, 0, 64, 64]] * 2, dtype=np.float32)
    got = _outputs(tmp_path / "out", inputs | added)
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    with torch.no_grad():
        extra = {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in added.items()}} if added else {}
        down, mid = model(**tensors, return_dict=False, **extra)
    for mine, theirs in zip(got, [*down, mid], strict=True):
        assert np.abs(mine - theirs.numpy()).max() < 1e-4


def test_a_controlnet_hub_id_fetches_its_one_model(tiny_controlnets, tmp_path, monkeypatch):
    """A ControlNet repository: its configs first, then its config and weights, not a pipeline's files."""
    pytest.importorskip("diffusers")
    import huggingface_hub

    from sdcpu.export.convert import convert
    from sdcpu.export.sources.hub import FAMILY_FILES

    asked: list[list[str]] = []

    def fake_snapshot(repo_id, allow_patterns):
        asked.append(allow_patterns)
        return str(tiny_controlnets[0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    manifest = convert("someone/control_tiny", tmp_path / "out", "onnx", progress=lambda _: None)
    assert asked == [FAMILY_FILES, ["config.json", "diffusion_pytorch_model.safetensors"]]
    assert manifest.source == "someone/control_tiny" and (tmp_path / "out" / "controlnet" / "model.onnx").is_file()


def test_a_controlnet_file_that_is_not_whole_or_not_a_controlnet_config_is_refused(tmp_path):
    pytest.importorskip("diffusers")
    from safetensors.torch import save_file

    from sdcpu.export.convert import convert

    model = _tiny_controlnet("sd1")
    state = controlnet_to_ldm(model.state_dict(), dict(model.config))
    save_file({k: v for k, v in state.items() if "input_blocks.2." not in k}, tmp_path / "cut.safetensors")
    with pytest.raises(SdcpuError, match="cannot read the ControlNet in .*cut.safetensors"):
        convert(str(tmp_path / "cut.safetensors"), tmp_path / "out", "onnx", progress=lambda _: None)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    save_file(state, tmp_path / "whole.safetensors")
    with pytest.raises(SdcpuError, match="not of a ControlNetModel"):
        convert(str(tmp_path / "whole.safetensors"), tmp_path / "out", "onnx", config_dir=tmp_path / "config")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "cut.safetensors", "whole.safetensors"]


def test_a_pickled_controlnet_is_refused_saying_to_get_its_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from sdcpu.export.convert import convert

    model = _tiny_controlnet("sd1")
    torch.save(controlnet_to_ldm(model.state_dict(), dict(model.config)), tmp_path / "control_tiny.pth")
    with pytest.raises(SdcpuError, match=r"a ControlNet in a pickle \(.pth, .ckpt\).*its .safetensors version"):
        convert(str(tmp_path / "control_tiny.pth"), tmp_path / "out", "onnx", progress=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["control_tiny.pth"]
