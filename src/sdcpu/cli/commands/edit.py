"""The edit commands: `sdcpu inpaint`, `sdcpu upscale`, `sdcpu depth2img`, one per task beyond txt2img
and img2img."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sdcpu.cli.app import run_and_save
from sdcpu.cli.options import (
    Guidance,
    Height,
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
    sampling,
    with_load_options,
)
from sdcpu.runtime.options import LoadOptions


@with_load_options
def inpaint(
    prompt: Annotated[str, typer.Argument(help="what to paint where the mask is white")],
    image: Annotated[Path, typer.Option("--image", "-i", help="the image to edit")],
    mask: Annotated[Path, typer.Option(help="the image's size: white where it changes, black where it stays")],
    out: Out,
    overwrite: Overwrite = False,
    model: Model = None,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    guidance: Guidance = None,
    seed: Seed = None,
    width: Width = None,
    height: Height = None,
    num_images: NumImages = None,
    scheduler: Scheduler = None,
    strength: Annotated[float, typer.Option(help="1 repaints the masked part from noise; less keeps more of it")] = 1.0,
    mask_blur: Annotated[int, typer.Option(help="pixels of soft edge where the result meets the original")] = 4,
    mask_padding: Annotated[int, typer.Option(help="grow the mask by this many pixels first")] = 0,
    keep_unmasked: Annotated[
        bool, typer.Option(help="paste the original's pixels back outside the mask (decoding changes them a little)")
    ] = True,
    watermark: Watermark = False,
    *,
    options: LoadOptions,
) -> None:
    """Repaint the masked part of an image to match a prompt (any model; inpainting models do it best)."""
    from sdcpu.runtime.settings import MaskSettings

    given = sampling(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, width=width)
    given |= sampling(height=height, num_images=num_images, scheduler=scheduler, watermark=watermark)
    mask_settings = MaskSettings(blur=mask_blur, padding=mask_padding, keep_unmasked=keep_unmasked)

    def run(pipe, callback):
        return pipe.inpaint(
            prompt, image, mask, strength=strength, mask_settings=mask_settings, callback=callback, **given
        )

    run_and_save(model, options, out, overwrite, run, num_images or 1)


@with_load_options
def upscale(
    image: Annotated[Path, typer.Argument(help="the image to upscale 4x (cut to a multiple of 8 pixels)")],
    out: Out,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="what the image shows, to guide the detail")] = "",
    overwrite: Overwrite = False,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="an x4 upscaler folder made by `sdcpu convert`")
    ] = Path(),
    negative_prompt: NegativePrompt = None,
    steps: Annotated[int, typer.Option(help="denoising steps")] = 20,
    guidance: Annotated[float, typer.Option(help="guidance scale (<= 1 turns it off)")] = 9.0,
    noise_level: Annotated[int, typer.Option(help="noise added to the input: more lets the model invent detail")] = 20,
    seed: Seed = None,
    scheduler: Scheduler = None,
    tile: Annotated[int, typer.Option(help="the largest square of input pixels denoised at once (memory)")] = 320,
    tile_overlap: Annotated[int, typer.Option(help="input pixels that neighbouring tiles share, blended")] = 32,
    *,
    options: LoadOptions,
) -> None:
    """Upscale an image 4x with an x4 upscaler model (Stable Diffusion's x4-upscaling), in tiles."""
    given = sampling(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler)
    tiles = dict(noise_level=noise_level, tile=tile, tile_overlap=tile_overlap)

    def run(pipe, callback):
        return pipe.upscale(image, prompt, callback=callback, **tiles, **given)

    run_and_save(model, options, out, overwrite, run)


@with_load_options
def depth2img(
    prompt: Annotated[str, typer.Argument(help="what the image should become")],
    image: Annotated[Path, typer.Option("--image", "-i", help="the image to redraw, keeping its depth")],
    out: Out,
    model: Annotated[Path, typer.Option("--model", "-m", help="a depth2img folder made by `sdcpu convert`")],
    depth_map: Annotated[
        Path | None, typer.Option(help="a depth map (.npy, or a 16-bit PNG; larger is nearer) instead of the DPT's")
    ] = None,
    overwrite: Overwrite = False,
    negative_prompt: NegativePrompt = None,
    steps: Steps = None,
    guidance: Guidance = None,
    strength: Annotated[float, typer.Option(help="how much to change the image, (0, 1]")] = 0.8,
    seed: Seed = None,
    scheduler: Scheduler = None,
    num_images: NumImages = None,
    *,
    options: LoadOptions,
) -> None:
    """Redraw an image to match a prompt, keeping its depth (SD 2 depth models), estimated or given."""
    given = sampling(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler)
    given |= sampling(num_images=num_images)

    def run(pipe, callback):
        return pipe.depth2img(prompt, image, depth_map=depth_map, strength=strength, callback=callback, **given)

    run_and_save(model, options, out, overwrite, run, num_images or 1)
