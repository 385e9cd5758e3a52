"""A diffusers folder as a source (`model_index.json`, one folder per component), and the tiny VAE
(TAESD) that a convert may be given beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.export.families import export_family
from sdcpu.export.preflight import check_json_files
from sdcpu.export.sources.base import Source, read_config
from sdcpu.format.families import family_of
from sdcpu.format.safetensors import check_safetensors
from sdcpu.format.tokenizer_files import has_vocabulary

# The x4 upscaler's scheduler for its low-res input's noise; depth2img's depth estimator's image processor.
SUPPORT_CONFIGS = ("low_res_scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json")
# The upscaler's noise level limit; SDXL's zeros for an empty negative prompt (runtime/pipelines/sdxl.py).
PIPELINE_OPTIONS = ("max_noise_level", "force_zeros_for_empty_prompt")


def open_diffusers_folder(folder: Path, description: str) -> Source:
    unet_config = read_config(folder / "unet/config.json") if (folder / "unet/config.json").is_file() else {}
    index = read_config(folder / "model_index.json") if (folder / "model_index.json").exists() else {}
    family = family_of(unet_config, index)
    exporters = export_family(family)  # an unsupported family stops here, before anything is read
    for sub in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json"):
        if not (folder / sub).exists():
            raise SdcpuError(f"{folder} is not a Stable Diffusion diffusers folder: {sub} is missing")
    if not has_vocabulary(folder / "tokenizer"):
        raise SdcpuError(
            f"{folder} is not a Stable Diffusion diffusers folder: tokenizer/ needs vocab.json and merges.txt, "
            "or tokenizer.json"
        )
    scheduler_path = folder / "scheduler/scheduler_config.json"
    scheduler = read_config(scheduler_path) if scheduler_path.exists() else {}
    support = {rel: read_config(folder / rel) for rel in SUPPORT_CONFIGS if (folder / rel).exists()}
    if not (folder / "depth_estimator").is_dir():  # SD 1.x's feature_extractor serves its safety checker: not ours
        support.pop("feature_extractor/preprocessor_config.json", None)

    return Source(
        description=description,
        family=family,
        unet_config=unet_config,
        vae_config=read_config(folder / "vae/config.json"),
        scheduler_config=scheduler,
        tokenizer_dir=folder / "tokenizer",
        load=lambda kind: exporters.loaders[kind].from_pretrained(folder, kind),
        more_tokenizers={name: folder / name for name in exporters.tokenizers if name != "tokenizer"},
        optional=_depth_estimator(folder),
        support_configs=support,
        pipeline_options={key: index[key] for key in PIPELINE_OPTIONS if key in index},
    )


def _depth_estimator(folder: Path) -> dict[str, Callable[[], Any]]:
    """depth2img's DPT (transformers DPTForDepthEstimation), where the folder has one."""
    if not (folder / "depth_estimator" / "config.json").exists():
        return {}

    def load() -> Any:
        import torch
        from transformers import DPTForDepthEstimation

        # float32 whatever the config says (transformers 5 loads in the config's dtype)
        return DPTForDepthEstimation.from_pretrained(folder / "depth_estimator", dtype=torch.float32).eval()

    return {"depth_estimator": load}


def open_tiny_vae(folder: Path, latent_channels: int) -> Callable[[], Any]:
    """A loader of the diffusers AutoencoderTiny (TAESD) in `folder`, checked first: its config, its
    safetensors weights, and latents of the pipeline's width."""
    folder = Path(folder).expanduser()
    config = read_config(folder / "config.json") if folder.is_dir() else None
    if config is not None:
        check_json_files(folder)
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
