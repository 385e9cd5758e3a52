"""Where a checkpoint comes from: a diffusers folder, a Hugging Face hub id, or a single file.

Every source yields the same `Source`: configs, a tokenizer folder, and a loader that builds one
torch component at a time (so only one is in memory while it is exported).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.export.safetensors_check import check_safetensors
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.manifest import family_of
from sdcpu.runtime.tokenizer import has_vocabulary

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
CONVERTED_GRAPHS = ("openvino_model.xml", "model.onnx")
# The x4 upscaler's scheduler for its low-res input's noise; depth2img's depth estimator's image processor.
SUPPORT_CONFIGS = ("low_res_scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json")
PIPELINE_OPTIONS = ("max_noise_level",)  # a UNet already exported, by sdcpu or optimum


@dataclass(frozen=True)
class Source:
    description: str
    family: str
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    tokenizer_dir: Path
    load: Callable[[str], Any]  # "text_encoder" | "unet" | "vae" -> torch module in eval mode
    optional: dict[str, Callable[[], Any]] = field(default_factory=dict)  # other models given (tiny_vae)
    # A task's other configs, copied as they are (the upscaler's low_res_scheduler), by path in the folder,
    # and its pipeline's own settings from model_index.json (the upscaler's max_noise_level).
    support_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pipeline_options: dict[str, Any] = field(default_factory=dict)


def open_source(source: str, **single_file_options: Any) -> Source:
    """Resolve SOURCE (folder, single file or hub id) into a Source; raises SdcpuError if it cannot."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise SdcpuError(f"{path} is not a checkpoint: expected one of {', '.join(SINGLE_FILE_SUFFIXES)}")
        from sdcpu.export.single_file import open_single_file

        return open_single_file(path, **single_file_options)
    looks_local = path.suffix.lower() in SINGLE_FILE_SUFFIXES or source.startswith((".", "/", "~"))
    if not path.is_dir() and (looks_local or source.count("/") != 1):
        raise SdcpuError(f"{source} does not exist (expected a diffusers folder, a checkpoint file or a hub id)")
    _refuse_single_file_options(source, single_file_options)
    if path.is_dir():
        return open_diffusers_folder(path, str(path.resolve()))
    return open_diffusers_folder(_download(source), source)


def _refuse_single_file_options(source: str, options: dict[str, Any]) -> None:
    # A folder or hub id brings its own configs and tokenizer: these would be ignored, silently.
    given = [f"--{name.removesuffix('_dir')}" for name, value in options.items() if name != "work_dir" and value]
    if given:
        raise SdcpuError(
            f"{', '.join(given)}: for single-file checkpoints only; {source} is a diffusers folder or hub id "
            "with its own configs and tokenizer: leave the option out"
        )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    # Safetensors and configs only: we never fetch (or load) pickled weights from the hub.
    patterns = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*", "*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # the hub client raises many kinds; all mean "cannot get it"
        raise SdcpuError(f"cannot fetch {repo_id} from the Hugging Face hub: {err}") from err


def open_diffusers_folder(folder: Path, description: str) -> Source:
    if (folder / "sdcpu.json").exists() or any((folder / "unet" / name).exists() for name in CONVERTED_GRAPHS):
        raise SdcpuError(
            f"{folder} is already converted (it holds OpenVINO or ONNX graphs, not PyTorch weights); "
            f"generate with it: sdcpu generate PROMPT --model {folder} --out image.png"
        )
    for sub in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json"):
        if not (folder / sub).exists():
            raise SdcpuError(f"{folder} is not a Stable Diffusion diffusers folder: {sub} is missing")
    if not has_vocabulary(folder / "tokenizer"):
        raise SdcpuError(
            f"{folder} is not a Stable Diffusion diffusers folder: tokenizer/ needs vocab.json and merges.txt, "
            "or tokenizer.json"
        )
    for weights in sorted(folder.glob("*/*.safetensors")):
        check_safetensors(weights)
    unet_config = read_config(folder / "unet/config.json")
    scheduler_path = folder / "scheduler/scheduler_config.json"
    scheduler = read_config(scheduler_path) if scheduler_path.exists() else {}
    index = read_config(folder / "model_index.json") if (folder / "model_index.json").exists() else {}
    support = {rel: read_config(folder / rel) for rel in SUPPORT_CONFIGS if (folder / rel).exists()}
    if not (folder / "depth_estimator").is_dir():  # SD 1.x's feature_extractor serves its safety checker: not ours
        support.pop("feature_extractor/preprocessor_config.json", None)

    def load(component: str) -> Any:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[component]
        return cls.from_pretrained(folder, subfolder=component).eval()

    return Source(
        description=description,
        family=family_of(unet_config),
        unet_config=unet_config,
        vae_config=read_config(folder / "vae/config.json"),
        scheduler_config=scheduler,
        tokenizer_dir=folder / "tokenizer",
        load=load,
        optional=_depth_estimator(folder),
        support_configs=support,
        pipeline_options={key: index[key] for key in PIPELINE_OPTIONS if key in index},
    )


def _depth_estimator(folder: Path) -> dict[str, Callable[[], Any]]:
    """depth2img's DPT (transformers DPTForDepthEstimation), where the folder has one."""
    if not (folder / "depth_estimator" / "config.json").exists():
        return {}

    def load() -> Any:
        from transformers import DPTForDepthEstimation

        return DPTForDepthEstimation.from_pretrained(folder / "depth_estimator").eval()

    return {"depth_estimator": load}


def read_config(path: Path) -> dict[str, Any]:
    """A JSON config file as a dict; raises SdcpuError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SdcpuError(f"cannot read {path}: {err}; the folder is damaged") from None
    if not isinstance(data, dict):
        raise SdcpuError(f"{path} is not a JSON object; the folder is damaged")
    return data


def open_tiny_vae(folder: Path, latent_channels: int) -> Callable[[], Any]:
    """A loader of the diffusers AutoencoderTiny (TAESD) in `folder`, checked first: its config, its
    safetensors weights, and latents of the pipeline's width."""
    folder = Path(folder).expanduser()
    config = read_config(folder / "config.json") if folder.is_dir() else None
    if config is None or config.get("_class_name") != "AutoencoderTiny":
        raise SdcpuError(f"--tiny-vae {folder} is not a diffusers AutoencoderTiny folder (config.json, weights)")
    if int(config.get("latent_channels", 4)) != latent_channels:
        raise SdcpuError(
            f"--tiny-vae {folder} makes {config.get('latent_channels')}-channel latents; this model's have "
            f"{latent_channels} (a TAESD for another family, such as SDXL's or SD3's?)"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise SdcpuError(f"--tiny-vae {folder} has no .safetensors weights (pickled ones are not read)")
    for path in weights:
        check_safetensors(path)

    def load() -> Any:
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(folder, use_safetensors=True).eval()

    return load
