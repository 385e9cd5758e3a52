"""`sdcpu convert`: checkpoint -> a self-describing folder of OpenVINO IR or ONNX models.

The folder is built beside OUT under a temporary name and renamed into place only when complete,
manifest last, so a convert that fails or is killed never leaves a folder that `generate` accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.export.calibration import CalibrationSettings, collect_unet_inputs
from sdcpu.export.controlnet import convert_controlnet, write_residual_graph
from sdcpu.export.controlnet_sources import is_controlnet
from sdcpu.export.depth_estimator import convert_depth_estimator, is_depth_estimator_folder
from sdcpu.export.families import OPTIONAL_KINDS, export_family
from sdcpu.export.folders import move_into_place, versions, write_failure, write_manifest
from sdcpu.export.lora import PREFIXES as LORA_NETWORKS
from sdcpu.export.lora import Lora, check_lora_networks, check_lora_tensors, fuse_loras
from sdcpu.export.preflight import preflight
from sdcpu.export.quantize import FEW_STEP_RECIPE, NNCF_RECIPE, component_precision
from sdcpu.export.sources import Source, locate, open_source, open_tiny_vae
from sdcpu.export.tokenizer_ir import write_tokenizer_irs
from sdcpu.export.writers import WRITERS, Calibrate
from sdcpu.format.annotator import AnnotatorManifest
from sdcpu.format.controlnet import ControlNetManifest
from sdcpu.format.families import NAMES
from sdcpu.format.graph_signature import read_inputs
from sdcpu.format.manifest import GRAPH_FILE, MANIFEST_NAME, Manifest, describe_files, task_of
from sdcpu.format.tokenizer_files import TOKENIZER_FILES
from sdcpu.runtime.schedulers import SamplingDefaults, SchedulerConfig, sampling_defaults

OWNER = "convert.pid"  # in a convert's temporary folder: the process that writes it


def convert(
    source: str,
    out: str | Path,
    format: str = "openvino",
    precision: str = "fp32",
    *,
    force: bool = False,
    preset: str | None = None,
    config_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    calibration: CalibrationSettings | None = None,
    tiny_vae: str | Path | None = None,
    loras: Sequence[Lora] = (),
    progress: Callable[[str], None] = print,
) -> Manifest | ControlNetManifest | AnnotatorManifest:
    """Convert SOURCE (diffusers folder, hub id, or .safetensors/.ckpt file) into OUT; returns its manifest.
    A ControlNet (a diffusers folder, hub id or single .safetensors file) becomes a ControlNet folder
    (export/controlnet.py, export/controlnet_sources.py), and a depth estimator (a transformers DPT folder
    or hub id) an annotator folder (export/depth_estimator.py).
    `calibration` sets the prompts and sample count of `int8-hybrid` (default: CalibrationSettings()).
    `tiny_vae`: a diffusers AutoencoderTiny folder (TAESD), exported as tiny_vae_decoder and _encoder.
    `loras`: LoRA files fused into the UNet and text encoder before export (export/lora.py)."""
    out = Path(out).expanduser().absolute()
    given = {"--config": config_dir, "--tokenizer": tokenizer_dir, "--tiny-vae": tiny_vae}
    inputs = {name: Path(value).expanduser() for name, value in given.items() if value is not None}
    preflight(source, out, format, precision, force=force, inputs=inputs, loras=loras)
    for stale in remove_stale_work(out):
        progress(f"removed {stale.name}, left by a convert that was killed")
    where = locate(source)  # a hub id is fetched here: its configs, then the weights they call for
    apart = "ControlNet" if is_controlnet(where) else "depth estimator" if is_depth_estimator_folder(where) else None
    if apart:
        folder_config = config_dir if where.is_dir() else None  # a single ControlNet file may be given its config
        _refuse_apart(
            apart, preset=preset, config=folder_config, tokenizer=tokenizer_dir, tiny_vae=tiny_vae, lora=loras
        )
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        (work / OWNER).write_text(str(os.getpid()))
    except OSError as err:
        raise SdcpuError(f"cannot write in {out.parent}: {err.strerror}; choose another OUT") from err
    try:
        if apart:
            config = _opt_path(config_dir) if where.is_file() else None
            named = None if where == Path(source).expanduser() else source
            made = _convert_apart(apart, where, work / "apart", (format, precision), progress, config, named)
            move_into_place(work / "apart", out)
            progress(f"done: {out}")
            return made
        options = {
            "preset": preset,
            "config_dir": _opt_path(config_dir),
            "tokenizer_dir": _opt_path(tokenizer_dir),
            "work_dir": work,
        }
        src = open_source(source, where, **options)
        networks = set(export_family(src.family).loaders)
        check_lora_networks(list(loras), networks, NAMES.get(src.family, src.family))
        check_lora_tensors(list(loras), networks)
        if tiny_vae is not None:
            latent_channels = int(src.vae_config.get("latent_channels", 4))
            src = replace(src, optional=src.optional | {"tiny_vae": open_tiny_vae(Path(tiny_vae), latent_channels)})
        staged = work / "model"
        staged.mkdir()
        calibration = (calibration or CalibrationSettings()) if precision == "int8-hybrid" else None
        fuse = _lora_fuser(list(loras), progress)
        components = _export_components(src, staged, (format, precision), calibration, fuse, progress)
        files = [f for info in components.values() for f in info["files"]]
        files += _write_support_files(src, staged, format, progress)
        manifest = _manifest(src, staged, (format, precision), components, files, calibration)
        if loras:
            manifest = replace(manifest, extra=manifest.extra | {"loras": [lora.record() for lora in loras]})
        write_manifest(staged, MANIFEST_NAME, manifest.to_json())
        move_into_place(staged, out)
    except OSError as err:  # a full disk, a file-size limit, a read error: said, with nothing left behind
        raise write_failure(err, out, work) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(f"done: {out}")
    return manifest


def _convert_apart(
    what: str,
    where: Path,
    staged: Path,
    target: tuple[str, str],
    progress: Callable[[str], None],
    config: Path | None,
    named: str | None,
) -> ControlNetManifest | AnnotatorManifest:
    # A network converted into a folder of its own: a ControlNet, or the depth annotator's estimator.
    if what == "ControlNet":
        return convert_controlnet(where, staged, target, progress, config_dir=config, named=named)
    return convert_depth_estimator(where, staged, target, progress, named=named)


def _refuse_apart(what: str, **options: object) -> None:
    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value]
    if given:
        raise SdcpuError(f"{', '.join(given)}: not for a {what}, which is converted on its own; leave it out")


def remove_stale_work(out: Path) -> list[Path]:
    """Delete the temporary folders that converts to `out` killed before they finished left beside it
    (their process is gone, or they predate the record of it); returns them. A running convert's are kept."""
    stale = []
    for work in sorted(out.parent.glob(f".{out.name}.partial-*")) + sorted(out.parent.glob(f".{out.name}.old-*")):
        owner = work / OWNER
        pid = owner.read_text().strip() if owner.is_file() else ""
        if pid.isdigit() and _running(int(pid)):
            continue
        shutil.rmtree(work, ignore_errors=True)
        stale.append(work)
    return stale


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _opt_path(value: str | Path | None) -> Path | None:
    return Path(value).expanduser() if value is not None else None


def _lora_fuser(loras: list[Lora], progress: Callable[[str], None]) -> Callable[[Any, str], Any]:
    def fuse(model: Any, kind: str) -> Any:
        if loras and kind in LORA_NETWORKS:
            changed = fuse_loras(model, kind, loras, lambda line: progress(f"warning: {line}"))
            progress(f"{kind}: {changed} layers adapted by {len(loras)} LoRA file(s)")
        return model

    return fuse


def _export_components(
    src: Source,
    staged: Path,
    target: tuple[str, str],
    calibration: CalibrationSettings | None,
    prepare: Callable[[Any, str], Any],
    progress: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Export every component; returns the manifest's entry of each: precision, files, inputs, inner outputs.
    `prepare(model, kind)`: applied to each torch model once loaded (LoRA fusion)."""
    fmt, precision = target
    components: dict[str, dict[str, Any]] = {}
    loaded: dict[str, Any] = {}
    calibrate = _calibrator(src, staged, calibration, progress) if calibration is not None else None
    few_step = sampling_defaults(SchedulerConfig.from_dict(src.scheduler_config)) != SamplingDefaults()
    recipe = FEW_STEP_RECIPE if few_step else NNCF_RECIPE
    specs = export_family(src.family).components
    for component, (kind, make_spec) in specs.items():  # in the family's order, grouped by the model each is cut from
        start = time.perf_counter()
        if kind in OPTIONAL_KINDS and kind not in src.optional:
            continue
        if kind not in loaded:
            # One torch model in memory at a time (the VAE serves two components): the last one is let go
            # before the next loads, also by the names that still hold it.
            spec = model = None
            loaded.clear()
            model = src.optional[kind]() if kind in src.optional else src.load(kind)
            loaded[kind] = _check_finite_weights(prepare(model, kind), kind)
        spec = make_spec(loaded[kind])
        if spec is None:
            continue
        folder = staged / component
        folder.mkdir()
        exact = component_precision(precision, component)
        names = WRITERS[fmt](spec, folder, exact, calibrate if exact == "int8-hybrid" else None, recipe)
        if fmt == "onnx" and component == "unet":  # ControlNet's inputs for ONNX Runtime (export/controlnet.py)
            names += write_residual_graph(folder, _config_dict(loaded[kind]))
        (folder / "config.json").write_text(json.dumps(_config_dict(loaded[kind]), indent=2, default=str))
        components[component] = {"precision": exact, "files": [f"{component}/{name}" for name in names]}
        components[component]["inputs"] = read_inputs(folder / GRAPH_FILE[fmt])
        components[component] |= {"inner_outputs": list(spec.inner_outputs)} if spec.inner_outputs else {}
        scaling = _config_dict(loaded[kind]).get("scaling_factor")  # a VAE's: what its latents are divided by
        components[component] |= {"scaling_factor": float(scaling)} if scaling is not None else {}
        progress(f"{component}: exported to {fmt} {exact} in {time.perf_counter() - start:.1f} s")
    loaded.clear()
    return components


def _check_finite_weights(model: Any, kind: str) -> Any:
    # NaN or Inf weights would convert without a word and give black images: refuse them, named.
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SdcpuError(f"the checkpoint's {kind} weight {name} holds NaN or Inf; the checkpoint is damaged")
    return model


def _calibrator(src: Source, staged: Path, settings: CalibrationSettings, progress: Callable[[str], None]) -> Calibrate:
    vae_factor = 2 ** (len(src.vae_config["block_out_channels"]) - 1)
    size = int(src.unet_config.get("sample_size", 64))
    resolution = settings.resolution
    if resolution is not None and resolution % vae_factor:
        raise SdcpuError(f"the calibration resolution must be a multiple of {vae_factor}; got {resolution}")
    if resolution is not None:
        size = resolution // vae_factor
    shape = (int(src.unet_config.get("in_channels", 4)), size, size)

    def calibrate(unet: Any) -> list[dict[str, Any]]:
        pixels = size * vae_factor
        where = f"at {pixels}x{pixels} from {len(settings.prompts)} prompts"
        progress(f"unet: recording {settings.size} calibration inputs {where}")
        text = export_family(src.family).calibration_text(staged, src.tokenizers(), pixels)
        return collect_unet_inputs(unet, text, src.scheduler_config, shape, settings)

    return calibrate


def _config_dict(model: Any) -> dict[str, Any]:
    config = model.config  # diffusers: a FrozenDict; transformers: a PretrainedConfig
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    config.pop("_name_or_path", None)  # a path on the converting machine; the manifest names the source
    return config


def _write_support_files(src: Source, staged: Path, fmt: str, progress: Callable[[str], None]) -> list[str]:
    written = []
    for folder, source in src.tokenizers().items():  # the family's tokenizers
        (staged / folder).mkdir()
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copyfile(source / name, staged / folder / name)
                written.append(f"{folder}/{name}")
        if fmt == "openvino":  # for openvino.genai, which tokenizes in OpenVINO
            irs = write_tokenizer_irs(staged / folder)
            written += [f"{folder}/{name}" for name in irs]
            progress(
                f"{folder}: OpenVINO IRs written" if irs else f"{folder}: no OpenVINO IRs (openvino-tokenizers absent)"
            )
    configs = {"scheduler/scheduler_config.json": src.scheduler_config, **src.support_configs}
    for rel, config in configs.items():
        (staged / rel).parent.mkdir(exist_ok=True)
        (staged / rel).write_text(json.dumps(config, indent=2))
    index = model_index(src.scheduler_config.get("_class_name", "PNDMScheduler"), _task(src), src.family)
    index |= {rel.split("/")[0]: _library_class(config) for rel, config in src.support_configs.items()}
    index |= {"depth_estimator": ["transformers", "DPTForDepthEstimation"]} if "depth_estimator" in src.optional else {}
    (staged / "model_index.json").write_text(json.dumps(index | src.pipeline_options, indent=2))
    return [*written, *configs, "model_index.json"]


def _task(src: Source) -> str:
    return task_of(src.unet_config, int(src.vae_config.get("latent_channels", 4)))


def _library_class(config: dict[str, Any]) -> list[str]:
    # diffusers configs name their class in `_class_name`, transformers' image processors in `image_processor_type`
    if "image_processor_type" in config:
        return ["transformers", str(config["image_processor_type"])]
    return ["diffusers", str(config.get("_class_name"))]


def model_index(scheduler_class: str, task: str = "text-to-image", family: str = "sd1") -> dict[str, Any]:
    """diffusers' model_index.json for a pipeline of `family` and `task`, without safety checker."""
    return export_family(family).model_index(task, scheduler_class)


def _manifest(
    src: Source,
    staged: Path,
    target: tuple[str, str],
    components: dict[str, dict[str, Any]],
    files: list[str],
    calibration: CalibrationSettings | None,
) -> Manifest:
    fmt, precision = target  # format and precision
    vae_factor = 2 ** (len(src.vae_config["block_out_channels"]) - 1)
    extra: dict[str, Any] = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if calibration is not None:
        extra["calibration"] = calibration.to_dict()
    extra |= src.pipeline_options
    return Manifest(
        source=src.description,
        family=src.family,
        prediction_type=src.scheduler_config.get("prediction_type", "epsilon"),
        format=fmt,
        precision=precision,
        sample_size=int(src.unet_config.get("sample_size", 64)) * vae_factor,
        vae_scale_factor=vae_factor,
        vae_scaling_factor=float(src.vae_config.get("scaling_factor", 0.18215)),
        latent_channels=int(src.vae_config.get("latent_channels", 4)),
        components=components,
        files=describe_files(staged, files),
        versions=versions(fmt),
        extra=extra,
        task=_task(src),
    )
