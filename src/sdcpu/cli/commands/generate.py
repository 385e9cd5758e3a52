"""`sdcpu generate`: txt2img and img2img, or the settings stored in a PNG again."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from sdcpu.cli.app import fail, run_and_save
from sdcpu.cli.options import (
    DEEP_CACHE_HELP,
    FROM_PNG_HELP,
    ControlMode,
    ControlModule,
    Controls,
    Guidance,
    Height,
    Loras,
    Model,
    NegativePrompt,
    NumImages,
    Out,
    Overwrite,
    Scheduler,
    Seed,
    Steps,
    Watermark,
    Width,
    parse_controls,
    parse_loras,
    with_load_options,
)
from sdcpu.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions


@with_load_options
def generate(
    out: Out,
    prompt: Annotated[str | None, typer.Argument(help="what to draw (or --from-png)")] = None,
    overwrite: Overwrite = False,
    from_png: Annotated[Path | None, typer.Option(help=FROM_PNG_HELP)] = None,
    model: Model = None,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    guidance: Guidance = None,
    seed: Seed = None,
    width: Width = None,
    height: Height = None,
    num_images: NumImages = None,
    scheduler: Scheduler = None,
    init_image: Annotated[Path | None, typer.Option(help="start from this image (img2img)")] = None,
    strength: Annotated[float, typer.Option(help="img2img: how much to change the init image, (0, 1]")] = 0.8,
    deep_cache: Annotated[int | None, typer.Option(help=DEEP_CACHE_HELP)] = None,
    watermark: Watermark = False,
    lora: Loras = None,
    control: Controls = None,
    control_mode: ControlMode = "balanced",
    control_module: ControlModule = "none",
    preview_every: Annotated[int, typer.Option(help="write a preview every N steps to --preview-out")] = 0,
    preview_out: Annotated[Path | None, typer.Option(help="PNG the preview is written to (replaced each time)")] = None,
    *,
    options: LoadOptions,
) -> None:
    """Generate images from a prompt (or from an init image and a prompt, or the settings of a PNG)."""
    from sdcpu.runtime.io.preview import check_preview, preview_writer
    from sdcpu.runtime.io.stored import generation_request, read_png
    from sdcpu.runtime.lora.prompt import changed_loras

    given: dict[str, Any] = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed)
    given["width"] = width
    given |= dict(height=height, num_images=num_images, scheduler=scheduler, deep_cache=deep_cache)
    given["watermark"] = watermark or None  # None: not asked for here, so a PNG's setting stands
    given["loras"] = parse_loras(lora) or None
    try:
        with warnings.catch_warnings(record=True) as noted:
            warnings.simplefilter("always")
            stored, recorded = read_png(from_png) if from_png is not None else ({}, {})
            request = generation_request(prompt, given, stored)
            if recorded and not lora:  # the LoRAs of its tags: the files the image was made with?
                for note in changed_loras(request["prompt"], recorded, options.lora_dir):
                    warnings.warn(note, stacklevel=1)
            units = parse_controls(control)
            if preview_every or preview_out:
                check_preview(preview_every, preview_out)  # before the model loads, not at the first write
    except SdcpuError as err:
        raise fail(err) from None

    def run(pipe, callback):
        controls = _controls(pipe, units, control_mode, control_module)
        return pipe(callback=callback, init_image=init_image, strength=strength, controls=controls, **request)

    def preview(pipe):
        return preview_writer(pipe.preview, preview_every, preview_out) if preview_every or preview_out else None

    count = request.get("num_images", 1)
    run_and_save(model, options, out, overwrite, run, count, preview, noted)


def _controls(pipe: Any, units: list[tuple[Path, Path, float, float, float]], mode: str, module: str) -> list[Any]:
    # A ControlNet is a folder, or a name in --controlnet-dir (the bundled demo's own: `edges`).
    from sdcpu.runtime.controlnet.folders import find_controlnet
    from sdcpu.runtime.controlnet.setting import ControlSetting
    from sdcpu.runtime.io.images import read_image

    controls = []
    for folder, image, weight, start, end in units:
        picture = read_image(image, "control image")
        found = find_controlnet(folder, pipe.controlnet_dir)
        annotators = pipe.controlnets.annotators  # depth where --depth-estimator was given
        controls.append(ControlSetting.of(found, picture, weight, start, end, mode, module, annotators=annotators))
    return controls
