"""The `sdcpu` commands (convert, generate, serve, eval, bench, cache). No logic here: parse options, call
the library, report.

Errors the user can fix (SdcpuError) are printed without a traceback and exit with code 2.
"""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from sdcpu.cli.options import (
    DEEP_CACHE_HELP,
    FROM_PNG_HELP,
    INT8_ACTIVATIONS_HELP,
    INT8_FLAG,
    MODEL_HELP,
    PRECISION_HELP,
    WATERMARK_HELP,
    Backend,
    ComputePrecision,
    Format,
    load_options,
    with_load_options,
)
from sdcpu.runtime.errors import SdcpuError, SdcpuNotice
from sdcpu.runtime.options import LoadOptions

app = typer.Typer(
    help="Stable Diffusion on the CPU: convert checkpoints, generate images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Boxes and colours for a person at a terminal; plain text for logs, pipes and scripts.
    rich_markup_mode="rich" if sys.stderr.isatty() else None,
)
console = Console(stderr=True)


def fail(err: Exception) -> typer.Exit:
    # Plain text: terminal escapes that came with a library's message are dropped, and so is markup.
    message = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", str(err))
    console.print("[red]error:[/red] ", escape(message), sep="", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="diffusers folder, Hugging Face hub id, or .safetensors/.ckpt file")],
    out: Annotated[Path, typer.Argument(help="output folder (created atomically)")],
    format: Annotated[Format, typer.Option("--format", "-f", help="model format to write")] = Format.openvino,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8; OpenVINO also int8-hybrid (int8 UNet activations) and int4")
    ] = "fp32",
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    preset: Annotated[str | None, typer.Option(help="single files: sd1, sd2-base or sd2-v (default: detected)")] = None,
    config: Annotated[Path | None, typer.Option(help="single files: a diffusers folder whose configs to use")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="single files: a CLIP tokenizer folder")] = None,
    calibration_prompts: Annotated[
        Path | None, typer.Option(help="int8-hybrid: a text file of prompts, one per line (default: 8 built in)")
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="int8-hybrid: UNet inputs to calibrate on")] = 32,
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
    try:
        from sdcpu.export.convert import convert as run_convert
    except ImportError as err:
        missing = SdcpuError(f"convert needs the export extra ({err.name} is missing): pip install 'sdcpu[export]'")
        raise fail(missing) from None
    try:
        calibration = _calibration(calibration_prompts, calibration_size)
        loras = _loras(lora or [], lora_scale or [])
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


@app.command()
@with_load_options
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (image-N.png for several)")],
    prompt: Annotated[str | None, typer.Argument(help="what to draw (or --from-png)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    from_png: Annotated[Path | None, typer.Option(help=FROM_PNG_HELP)] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="what to steer away from")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps [default: 20; LCM models 4, Turbo 1]")] = None,
    guidance: Annotated[
        float | None, typer.Option(help="guidance scale (<= 1 turns it off) [default: 7.5; few-step models off]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (default: a fresh one, stored in the PNG)")] = None,
    width: Annotated[int | None, typer.Option(help="image width, a multiple of 8 (default: the model's)")] = None,
    height: Annotated[int | None, typer.Option(help="image height, a multiple of 8 (default: the model's)")] = None,
    num_images: Annotated[int | None, typer.Option(help="how many images [default: 1]")] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="ddim, pndm, euler, euler-a, dpm++2m, dpm++2m-karras, lcm (default: the model's own)"),
    ] = None,
    init_image: Annotated[Path | None, typer.Option(help="start from this image (img2img)")] = None,
    strength: Annotated[float, typer.Option(help="img2img: how much to change the init image, (0, 1]")] = 0.8,
    deep_cache: Annotated[int | None, typer.Option(help=DEEP_CACHE_HELP)] = None,
    watermark: Annotated[bool, typer.Option(help=WATERMARK_HELP)] = False,
    preview_every: Annotated[int, typer.Option(help="write a preview every N steps to --preview-out")] = 0,
    preview_out: Annotated[Path | None, typer.Option(help="PNG the preview is written to (replaced each time)")] = None,
    *,
    options: LoadOptions,
) -> None:
    """Generate images from a prompt (or from an init image and a prompt, or the settings of a PNG)."""
    from sdcpu.runtime.infotext import generation_request
    from sdcpu.runtime.outputs import output_paths
    from sdcpu.runtime.pipeline import Pipeline
    from sdcpu.runtime.preview import preview_writer

    given = dict(negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed, width=width)
    given |= dict(height=height, num_images=num_images, scheduler=scheduler, deep_cache=deep_cache)
    given["watermark"] = watermark or None  # None: not asked for here, so a PNG's setting stands
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            request = generation_request(prompt, given, from_png)
            output_paths(out, request.get("num_images", 1), overwrite)  # before any work: a bad --out costs nothing
            with console.status("loading model"):
                pipe = Pipeline.load(model, options)
        preview = preview_writer(pipe.preview, preview_every, preview_out) if preview_every or preview_out else None
        run = lambda callback: pipe(callback=callback, init_image=init_image, strength=strength, **request)  # noqa: E731
        result, warned = run_with_progress(run, preview)
        save_result(result, out, overwrite, caught + warned)
    except SdcpuError as err:
        raise fail(err) from None


def run_with_progress(run, preview):
    """`run(callback)` with a progress bar (and previews); returns its result and the warnings it gave."""
    from sdcpu.cli.progress import StepProgress

    with warnings.catch_warnings(record=True) as caught, StepProgress(console) as progress:
        warnings.simplefilter("always")

        def step(done, total, latents):
            if preview is not None:
                preview(done, total, latents)
            return progress.update(done, total, latents)

        result = run(step)
    return result, caught


def save_result(result, out: Path, overwrite: bool, warned: list[warnings.WarningMessage]) -> None:
    for w in warned:
        kind = "note:" if issubclass(w.category, SdcpuNotice) else "[yellow]warning:[/yellow]"
        console.print(f"{kind} {escape(str(w.message))}", highlight=False, soft_wrap=True)
    for path in result.save(out, overwrite):
        ran = f"seed {result.settings.seed}, {result.runtime['compute_precision']} on {result.runtime['device']}"
        console.print(f"wrote {path} ({ran})", highlight=False, soft_wrap=True)


@app.command(name="eval")
def evaluate(
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    reference: Annotated[Path | None, typer.Option(help="another model folder to compare with (SSIM, PSNR)")] = None,
    count: Annotated[int, typer.Option(help="how many held-out captions (at most 240)")] = 240,
    steps: Annotated[int, typer.Option(help="denoising steps")] = 20,
    guidance: Annotated[float, typer.Option(help="classifier-free guidance scale")] = 7.5,
    scheduler: Annotated[str | None, typer.Option(help="scheduler (default: the model's own)")] = None,
    deep_cache: Annotated[int, typer.Option(help=DEEP_CACHE_HELP + "; for --model only, not --reference")] = 1,
    backend: Backend = None,
    compute_precision: Annotated[
        ComputePrecision, typer.Option(help=PRECISION_HELP + "; for --model only, --reference runs at f32")
    ] = ComputePrecision.auto,
    int8_activations: Annotated[
        bool | None, typer.Option(INT8_FLAG, help=INT8_ACTIVATIONS_HELP + "; for --model only")
    ] = None,
) -> None:
    """Score a model on the demo world's held-out captions (prompt-following accuracy by the oracle)."""
    from sdcpu.runtime.evaluation import evaluate as run_eval
    from sdcpu.runtime.pipeline import Pipeline

    options = load_options(backend, compute_precision=compute_precision, int8_activations=int8_activations)
    try:
        pipe = Pipeline.load(model, options)
        reference_options = load_options(compute_precision=ComputePrecision.f32)
        other = Pipeline.load(reference, reference_options) if reference is not None else None

        def runner(p: Pipeline, deep: int = 1):
            return lambda caption, seed: p(
                caption, steps=steps, guidance=guidance, seed=seed, scheduler=scheduler, deep_cache=deep
            ).array[0]

        report = run_eval(runner(pipe, deep_cache), count, runner(other) if other is not None else None)
    except SdcpuError as err:
        raise fail(err) from None
    for key, value in pipe.runtime_info().items():
        typer.echo(f"{key}: {value}")
    for name, score in report.summary().items():
        typer.echo(f"{name}: {score:.4f}")


@app.command(name="bench")
@with_load_options
def benchmark(
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    compare: Annotated[Path | None, typer.Option(help="a second model folder, run alternately with the first")] = None,
    steps: Annotated[int, typer.Option(help="denoising steps per run")] = 20,
    runs: Annotated[int, typer.Option(help="runs per model (medians are reported)")] = 3,
    width: Annotated[int | None, typer.Option(help="image width (default: the model's)")] = None,
    height: Annotated[int | None, typer.Option(help="image height (default: the model's)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results here")] = None,
    deep_cache: Annotated[int, typer.Option(help=DEEP_CACHE_HELP)] = 1,
    *,
    options: LoadOptions,
) -> None:
    """Time load, text encoding, each UNet step, VAE decode and the whole run; peak RSS per model."""
    import json

    from sdcpu.runtime.bench import BenchSettings, bench

    settings = BenchSettings(steps=steps, runs=runs, width=width, height=height, deep_cache=deep_cache, load=options)
    folders = [model] if compare is None else [model, compare]
    try:
        report = bench(folders, settings, progress=lambda line: console.print(line, highlight=False))
    except SdcpuError as err:
        raise fail(err) from None
    _print_bench(report)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")


@app.command()
@with_load_options
def serve(
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    host: Annotated[str, typer.Option(help="address to listen on; beyond 127.0.0.1 it needs --api-key")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SDCPU_API_KEY", help="a key every request must carry (Basic auth password, Bearer or X-API-Key)"
        ),
    ] = None,
    queue: Annotated[int, typer.Option(help="jobs waiting or running at most; more are refused with 429")] = 16,
    preview_every: Annotated[int, typer.Option(help="a preview image every N steps (0: none)")] = 1,
    *,
    options: LoadOptions,
) -> None:
    """Serve a web page, a JSON API and an A1111-compatible API (/sdapi/v1) for one model (the serve extra)."""
    from sdcpu.runtime.pipeline import Pipeline

    try:
        import uvicorn

        from sdcpu.serve.app import create_app
        from sdcpu.serve.limits import ServeLimits
        from sdcpu.serve.security import check_bind
    except ImportError as err:
        missing = SdcpuError(f"sdcpu serve needs the serve extra ({err.name} is missing): pip install 'sdcpu[serve]'")
        raise fail(missing) from None
    try:
        check_bind(host, api_key)
        if queue < 1 or preview_every < 0:
            raise SdcpuError("--queue must be at least 1 and --preview-every at least 0")
        with console.status("loading model"):
            pipe = Pipeline.load(model, options)
    except SdcpuError as err:
        raise fail(err) from None
    console.print(f"serving {pipe.model_name} at http://{host}:{port}/ (A1111 API at /sdapi/v1)", highlight=False)
    app_ = create_app(pipe, ServeLimits(queue=queue), api_key, preview_every)
    # Open event streams and waiting A1111 calls end with their jobs: give them 5 s, then the app's
    # shutdown cancels what is queued or running.
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)


@app.command(name="info")
def info() -> None:
    """Show the CPU, its ISA, OpenVINO's capabilities and default precision, and what auto precision picks."""
    from sdcpu.runtime.precision import system_report

    for key, value in system_report().items():
        typer.echo(f"{key}: {value}")


@app.command(name="cache")
def cache_command(
    clear: Annotated[bool, typer.Option("--clear", help="delete the compiled models and the record of hashes")] = False,
) -> None:
    """Show where compiled models are cached ($SDCPU_CACHE_DIR or ~/.cache/sdcpu) and their size; --clear
    empties it (the next run compiles again)."""
    from sdcpu.runtime.cache import cache_files, clear_cache, default_cache_dir

    folder = default_cache_dir()
    files = cache_files(folder)
    typer.echo(f"{folder}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:,.0f} MB")
    if clear:
        try:
            freed = clear_cache(folder)
        except SdcpuError as err:
            raise fail(err) from None
        typer.echo(f"cleared: {freed / 1e6:,.0f} MB freed")


def _print_bench(report: dict) -> None:
    from rich.table import Table

    models, machine = report["models"], report["machine"]
    title = f"sdcpu bench: {report['settings']['steps']} steps, medians of {report['settings']['runs']}"
    cpu = f"{machine['cpu']}, {machine['cores']} cores, {' '.join(machine['isa'])}"
    table = Table(title=f"{title}\n{cpu}")
    table.add_column("")
    for i, m in enumerate(models):
        table.add_column(f"{'AB'[i]}: {m['source']}", justify="right")
    if len(models) == 2:
        table.add_column("B / A", justify="right")
    rows = [
        ("load", "load_s", "s"),
        ("text encoder", "text_encoder_s", "s"),
        ("UNet step", "unet_step_s", "s"),
        *([("shallow UNet step", "unet_shallow_step_s", "s")] if "unet_shallow_step_s" in models[0] else []),
        ("first UNet step", "unet_first_step_s", "s"),
        ("VAE decode", "vae_decode_s", "s"),
        ("end to end", "end_to_end_s", "s"),
        ("peak RSS", "peak_rss_gb", "GB"),
    ]
    for label, key in (("weights", "precision"), ("compute", "compute_precision")):
        table.add_row(label, *[str(m[key]) for m in models], *([""] if len(models) == 2 else []))
    for label, key, unit in rows:
        cells = [f"{m[key]:.3f} {unit}" for m in models]
        if len(models) == 2:
            cells.append(f"{models[1][key] / models[0][key]:.2f}x" if models[0][key] else "")
        table.add_row(label, *cells)
    Console().print(table)


def _loras(files: list[Path], scales: list[float]):
    from sdcpu.export.lora import Lora

    if len(scales) > len(files):
        raise SdcpuError(f"{len(scales)} --lora-scale values for {len(files)} --lora files; give one per file")
    return [Lora(path, scales[i] if i < len(scales) else 1.0) for i, path in enumerate(files)]


def _calibration(prompts: Path | None, size: int):
    from sdcpu.export.calibration import CalibrationSettings

    if size < 1:
        raise SdcpuError(f"--calibration-size must be at least 1; got {size}")
    if prompts is None:
        return CalibrationSettings(size=size)
    if not prompts.is_file():
        raise SdcpuError(f"--calibration-prompts {prompts} is not a file; give a text file with one prompt per line")
    return CalibrationSettings.from_file(prompts, size)


def main() -> None:
    sys.exit(app())


from sdcpu.cli import modes as _modes  # noqa: E402, F401  (registers inpaint; it uses the helpers above)
