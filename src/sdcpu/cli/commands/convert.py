"""`sdcpu convert`: a checkpoint to a folder of OpenVINO IR or ONNX models (the export extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sdcpu.cli.app import console, fail
from sdcpu.cli.options import Format
from sdcpu.errors import SdcpuError

if TYPE_CHECKING:
    from sdcpu.export.lora import Lora


def convert(
    source: Annotated[str, typer.Argument(help="diffusers folder, Hugging Face hub id, or .safetensors/.ckpt file")],
    out: Annotated[Path, typer.Argument(help="output folder (created atomically)")],
    format: Annotated[Format, typer.Option("--format", "-f", help="model format to write")] = Format.openvino,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8; OpenVINO also int8-hybrid (int8 UNet activations) and int4")
    ] = "fp32",
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    preset: Annotated[
        str | None, typer.Option(help="single files: sd1, sd2-base, sd2-v or sdxl (default: detected)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="single files: a diffusers folder whose configs to use (a ControlNet's: with its config.json)"
        ),
    ] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="single files: a CLIP tokenizer folder")] = None,
    calibration_prompts: Annotated[
        Path | None, typer.Option(help="int8-hybrid: a text file of prompts, one per line (default: 8 built in)")
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="int8-hybrid: UNet inputs to calibrate on")] = 32,
    calibration_resolution: Annotated[
        int | None, typer.Option(help="int8-hybrid: the square size in pixels to calibrate at (default: native)")
    ] = None,
    tiny_vae: Annotated[
        Path | None, typer.Option(help="a diffusers AutoencoderTiny folder (TAESD) to export too, for --decoder tiny")
    ] = None,
    lora: Annotated[
        list[Path] | None, typer.Option(help="a LoRA .safetensors (diffusers or kohya layout) to fuse in; repeatable")
    ] = None,
    lora_scale: Annotated[
        list[float] | None, typer.Option(help="the scale of each --lora, in the same order [default: 1]")
    ] = None,
) -> None:
    """Convert a Stable Diffusion checkpoint to OpenVINO IR or ONNX."""
    from sdcpu.export.preflight import preflight

    try:
        # Everything that can be checked without torch first: a mistake is answered before it imports.
        check_calibration(calibration_size, calibration_resolution)
        loras = _loras(lora or [], lora_scale or [])
        inputs = {"--config": config, "--tokenizer": tokenizer, "--tiny-vae": tiny_vae}
        given = {name: path.expanduser() for name, path in inputs.items() if path is not None}
        preflight(source, out.expanduser().absolute(), format.value, precision, force=force, inputs=given, loras=loras)
    except SdcpuError as err:
        raise fail(err) from None
    try:
        from sdcpu.export.convert import convert as run_convert
    except ImportError as err:
        missing = SdcpuError(f"convert needs the export extra ({err.name} is missing): pip install 'sdcpu[export]'")
        raise fail(missing) from None
    try:
        calibration = _calibration(calibration_prompts, calibration_size, calibration_resolution)
        run_convert(
            source,
            out,
            format.value,
            precision,
            force=force,
            preset=preset,
            config_dir=config,
            tokenizer_dir=tokenizer,
            calibration=calibration,
            tiny_vae=tiny_vae,
            loras=loras,
            progress=lambda line: console.print(line, highlight=False),
        )
    except SdcpuError as err:
        raise fail(err) from None


def _loras(files: list[Path], scales: list[float]) -> list[Lora]:
    from sdcpu.export.lora import Lora

    if len(scales) > len(files):
        raise SdcpuError(f"{len(scales)} --lora-scale values for {len(files)} --lora files; give one per file")
    return [Lora(path, scales[i] if i < len(scales) else 1.0) for i, path in enumerate(files)]


def check_calibration(size: int, resolution: int | None) -> None:
    if size < 1:
        raise SdcpuError(f"--calibration-size must be at least 1; got {size}")
    if resolution is not None and not 64 <= resolution <= 2048:
        raise SdcpuError(f"--calibration-resolution must be between 64 and 2048 pixels; got {resolution}")


def _calibration(prompts: Path | None, size: int, resolution: int | None):
    from sdcpu.export.calibration import CalibrationSettings

    if prompts is None:
        return CalibrationSettings(size=size, resolution=resolution)
    if not prompts.is_file():
        raise SdcpuError(f"--calibration-prompts {prompts} is not a file; give a text file with one prompt per line")
    return CalibrationSettings.from_file(prompts, size, resolution)
