"""The edit modes' commands: `sdcpu inpaint`, `sdcpu upscale`, `sdcpu depth2img`. Registered on the app of cli/main.py,
whose helpers they share."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from sdcpu.cli.main import app, console, fail, run_with_progress, save_result
from sdcpu.cli.options import MODEL_HELP, WATERMARK_HELP, with_load_options
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.options import LoadOptions

OUT_HELP = "PNG to write (image-N.png for several)"
SCHEDULER_HELP = "ddim, pndm, euler, euler-a, dpm++2m, dpm++2m-karras, lcm (default: the model's own)"


@app.command()
@with_load_options
def inpaint(
    prompt: Annotated[str, typer.Argument(help="what to paint where the mask is white")],
    image: Annotated[Path, typer.Option("--image", "-i", help="the image to edit")],
    mask: Annotated[Path, typer.Option(help="the image's size: white where it changes, black where it stays")],
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps [default: the model's, 20 for most]")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale (<= 1 turns it off) [default: 7.5]")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: a fresh one, stored in the PNG)")] = None,
    width: Annotated[int | None, typer.Option(help="output width, a multiple of 8 (default: the image's)")] = None,
    height: Annotated[int | None, typer.Option(help="output height, a multiple of 8 (default: the image's)")] = None,
    num_images: Annotated[int, typer.Option(help="how many images")] = 1,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_HELP)] = None,
    strength: Annotated[float, typer.Option(help="1 repaints the masked part from noise; less keeps more of it")] = 1.0,
    mask_blur: Annotated[int, typer.Option(help="pixels of soft edge where the result meets the original")] = 4,
    mask_padding: Annotated[int, typer.Option(help="grow the mask by this many pixels first")] = 0,
    keep_unmasked: Annotated[
        bool, typer.Option(help="paste the original's pixels back outside the mask (decoding changes them a little)")
    ] = True,
    watermark: Annotated[bool, typer.Option(help=WATERMARK_HELP)] = False,
    *,
    options: LoadOptions,
) -> None:
    """Repaint the masked part of an image to match a prompt (any model; inpainting models do it best)."""
    from sdcpu.runtime.settings import MaskSettings

    settings = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, width=width)
    settings |= dict(height=height, num_images=num_images, scheduler=scheduler, watermark=watermark)
    mask_settings = MaskSettings(blur=mask_blur, padding=mask_padding, keep_unmasked=keep_unmasked)

    def run(pipe, callback):
        return pipe.inpaint(
            prompt, image, mask, strength=strength, mask_settings=mask_settings, callback=callback, **settings
        )

    _run_mode(model, options, out, num_images, overwrite, run)


def _run_mode(model: Path | None, options: LoadOptions, out: Path, count: int, overwrite: bool, run) -> None:
    """Check --out (before any work: a bad one costs nothing), load the model, `run(pipe, callback)` with a
    progress bar, save the images; an SdcpuError ends the command with exit code 2."""
    from sdcpu.runtime.outputs import output_paths
    from sdcpu.runtime.pipeline import Pipeline

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output_paths(out, count, overwrite)
            with console.status("loading model"):
                pipe = Pipeline.load(model, options)
        result, warned = run_with_progress(lambda callback: run(pipe, callback), None)
        save_result(result, out, overwrite, caught + warned)
    except SdcpuError as err:
        raise fail(err) from None


@app.command()
@with_load_options
def upscale(
    image: Annotated[Path, typer.Argument(help="the image to upscale 4x (cut to a multiple of 8 pixels)")],
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="what the image shows, to guide the detail")] = "",
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="an x4 upscaler folder made by `sdcpu convert`")
    ] = Path(),
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    steps: Annotated[int, typer.Option(help="denoising steps")] = 20,
    guidance: Annotated[float, typer.Option(help="guidance scale (<= 1 turns it off)")] = 9.0,
    noise_level: Annotated[int, typer.Option(help="noise added to the input: more lets the model invent detail")] = 20,
    seed: Annotated[int | None, typer.Option(help="random seed (default: a fresh one, stored in the PNG)")] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_HELP)] = None,
    tile: Annotated[int, typer.Option(help="the largest square of input pixels denoised at once (memory)")] = 320,
    tile_overlap: Annotated[int, typer.Option(help="input pixels that neighbouring tiles share, blended")] = 32,
    *,
    options: LoadOptions,
) -> None:
    """Upscale an image 4x with an x4 upscaler model (Stable Diffusion's x4-upscaling), in tiles."""
    settings = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler)
    tiles = dict(noise_level=noise_level, tile=tile, tile_overlap=tile_overlap)

    def run(pipe, callback):
        return pipe.upscale(image, prompt, callback=callback, **tiles, **settings)

    _run_mode(model, options, out, 1, overwrite, run)


@app.command()
@with_load_options
def depth2img(
    prompt: Annotated[str, typer.Argument(help="what the image should become")],
    image: Annotated[Path, typer.Option("--image", "-i", help="the image to redraw, keeping its depth")],
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    model: Annotated[Path, typer.Option("--model", "-m", help="a depth2img folder made by `sdcpu convert`")],
    depth_map: Annotated[
        Path | None, typer.Option(help="a depth map (.npy, or a 16-bit PNG; larger is nearer) instead of the DPT's")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps [default: the model's, 20 for most]")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale (<= 1 turns it off) [default: 7.5]")] = None,
    strength: Annotated[float, typer.Option(help="how much to change the image, (0, 1]")] = 0.8,
    seed: Annotated[int | None, typer.Option(help="random seed (default: a fresh one, stored in the PNG)")] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_HELP)] = None,
    num_images: Annotated[int, typer.Option(help="how many images")] = 1,
    *,
    options: LoadOptions,
) -> None:
    """Redraw an image to match a prompt, keeping its depth (SD 2 depth models), estimated or given."""
    settings = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler)

    def run(pipe, callback):
        return pipe.depth2img(
            prompt, image, depth_map=depth_map, strength=strength, num_images=num_images, callback=callback, **settings
        )

    _run_mode(model, options, out, num_images, overwrite, run)
