"""The command-line options shared by several commands: help texts, choices, and the load options
(runtime/options.py: LoadOptions) that generate, eval and bench take alike."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from sdcpu.errors import SdcpuError
from sdcpu.runtime.lora.prompt import NUMBER
from sdcpu.runtime.options import LoadOptions

WATERMARK_HELP = (
    "embed the invisible watermark of the reference Stable Diffusion scripts (invisible-watermark's dwtDct, "
    "payload StableDiffusionV1; images of 256x256 or more)"
)
FROM_PNG_HELP = (
    "run again the settings stored in a PNG, sdcpu's or AUTOMATIC1111's (prompt, negative prompt, steps, guidance, "
    "seed, size, sampler); options given here win"
)
MODEL_HELP = "folder made by `sdcpu convert` (default: the bundled demo model)"
LOW_MEMORY_HELP = "one network in memory at a time, batch-1 guidance, tiled VAE decode: slower, far smaller peak"
VERIFY_HELP = (
    "check the model's files against its manifest: fast = hash files changed since last hashed (by size, mtime "
    "and inode), full = hash every file, sizes = presence and sizes only"
)
DEEP_CACHE_HELP = (
    "DeepCache: run the whole UNet every N steps and only its outermost layers in between, reusing "
    "the deep features (faster, approximate; 1 = off)"
)
WINOGRAD_HELP = (
    "OpenVINO on the CPU: compute 3x3 convolutions with Winograd's algorithm (about 1.2x faster UNet steps "
    "at fp32, more memory for the larger filters; --low-memory turns it off)"
)
TOKEN_DOWNSAMPLING_HELP = (
    "ToDo: the highest-resolution self-attention uses one key and value per F x F block of latents "
    "(faster, approximate; OpenVINO folders only; 1 = off, 2 is the usual choice)"
)
PRECISION_HELP = (
    "arithmetic of the networks, apart from the stored weights: f32; bf16 (OpenVINO, CPUs with native bf16); "
    "auto = bf16 where the CPU has it, else f32"
)
INT8_FLAG = "--int8-activations/--no-int8-activations"
INT8_ACTIVATIONS_HELP = (
    "OpenVINO, folders with int8 or int4 weights: their MatMuls quantize activations to int8 on the fly "
    "(approximate; int8 dot products on CPUs with VNNI or AMX) [default: on for int8-hybrid on such CPUs]"
)
CACHE_HELP = "keep OpenVINO's compiled models in $SDCPU_CACHE_DIR or ~/.cache/sdcpu for a warm next start"


class Format(str, Enum):
    openvino = "openvino"
    onnx = "onnx"


class VerifyMode(str, Enum):
    fast = "fast"
    full = "full"
    sizes = "sizes"


class Decoder(str, Enum):
    full = "full"
    tiny = "tiny"


class ComputePrecision(str, Enum):
    auto = "auto"
    f32 = "f32"
    bf16 = "bf16"


# Load options, shared by generate, eval and bench (runtime/options.py: LoadOptions).
Backend = Annotated[str | None, typer.Option(help="openvino or onnxruntime (default: the folder's)")]
Device = Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, AUTO")]
LowMemory = Annotated[bool, typer.Option(help=LOW_MEMORY_HELP)]
Winograd = Annotated[bool, typer.Option(help=WINOGRAD_HELP)]
Cache = Annotated[bool, typer.Option(help=CACHE_HELP)]
TokenDownsampling = Annotated[int, typer.Option(help=TOKEN_DOWNSAMPLING_HELP)]
Precision = Annotated[ComputePrecision, typer.Option(help=PRECISION_HELP)]
Int8Activations = Annotated[bool | None, typer.Option(INT8_FLAG, help=INT8_ACTIVATIONS_HELP)]
Verify = Annotated[VerifyMode, typer.Option(help=VERIFY_HELP)]
LoraDir = Annotated[
    Path | None, typer.Option(help="folder of LoRA .safetensors files that prompts name as <lora:NAME:WEIGHT>")
]
ControlNetDir = Annotated[
    Path | None, typer.Option(help="folder of converted ControlNets (one folder each), named by --control NAME:IMAGE")
]
DepthEstimator = Annotated[
    Path | None,
    typer.Option(
        help="a converted depth estimator (sdcpu convert Intel/dpt-hybrid-midas DIR) for --control-module depth"
    ),
]
Threads = Annotated[
    int, typer.Option(help="threads per network (OpenVINO, ONNX Runtime); 0: every core", show_default=True)
]
LoraRank = Annotated[
    int,
    typer.Option(
        help="compile the attention layers ready for LoRAs up to this total rank, so the first compiles nothing"
    ),
]
DecoderFlag = Annotated[
    Decoder, typer.Option("--decoder", help="full: the model's VAE decoder; tiny: the tiny decoder (--tiny-vae)")
]


def load_options(
    backend: str | None = None,
    device: str = "CPU",
    compute_precision: ComputePrecision = ComputePrecision.auto,
    int8_activations: bool | None = None,
    cache: bool = True,
    low_memory: bool = False,
    winograd: bool = True,
    token_downsampling: int = 1,
    verify: VerifyMode = VerifyMode.fast,
    decoder: Decoder = Decoder.full,
    lora_dir: Path | None = None,
    lora_rank: int = 0,
    controlnet_dir: Path | None = None,
    depth_estimator: Path | None = None,
    threads: int = 0,
) -> LoadOptions:
    """The LoadOptions for these flags (validated when the model is loaded)."""
    return LoadOptions(
        backend=backend,
        device=device,
        compute_precision=compute_precision.value,
        int8_activations=int8_activations,
        cache=cache,
        low_memory=low_memory,
        winograd=winograd,
        token_downsampling=token_downsampling,
        verify=verify.value,
        decoder=decoder.value,
        lora_dir=lora_dir,
        lora_rank=lora_rank,
        controlnet_dir=controlnet_dir,
        depth_estimator=depth_estimator,
        threads=threads,
    )


# The load-option flags as typer reads them from a signature: load_options' parameters, with their Options.
FLAG_TYPES = {
    "backend": Backend,
    "device": Device,
    "compute_precision": Precision,
    "int8_activations": Int8Activations,
    "cache": Cache,
    "low_memory": LowMemory,
    "winograd": Winograd,
    "token_downsampling": TokenDownsampling,
    "verify": Verify,
    "decoder": DecoderFlag,
    "lora_dir": LoraDir,
    "lora_rank": LoraRank,
    "controlnet_dir": ControlNetDir,
    "depth_estimator": DepthEstimator,
    "threads": Threads,
}
LOAD_FLAGS = [
    parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=FLAG_TYPES[name])
    for name, parameter in inspect.signature(load_options).parameters.items()
]


def with_load_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command every load-option flag; it receives them as one LoadOptions, its `options` argument."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]

    @functools.wraps(command)
    def with_options(**given: Any) -> None:
        flags = {p.name: given.pop(p.name) for p in LOAD_FLAGS}
        command(**given, options=load_options(**flags))

    del with_options.__wrapped__  # typer reads the signature below, not the command's
    with_options.__signature__ = inspect.Signature([*own, *LOAD_FLAGS])  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in [*own, *LOAD_FLAGS]}
    return with_options


# Sampling flags, shared by generate and the edit commands (runtime/settings.py: GenerationSettings).
SCHEDULER_HELP = "ddim, pndm, euler, euler-a, dpm++2m, dpm++2m-karras, lcm (default: the model's own)"
Out = Annotated[Path, typer.Option("--out", "-o", help="PNG to write (image-N.png for several)")]
Overwrite = Annotated[bool, typer.Option(help="replace --out if it exists")]
Model = Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)]
NegativePrompt = Annotated[str | None, typer.Option(help="what to steer away from")]
Steps = Annotated[int | None, typer.Option(help="denoising steps [default: the model's: 20; LCM models 4, Turbo 1]")]
Guidance = Annotated[
    float | None, typer.Option(help="guidance scale (<= 1 turns it off) [default: the model's: 7.5; few-step off]")
]
Seed = Annotated[int | None, typer.Option(help="random seed (default: a fresh one, stored in the PNG)")]
Width = Annotated[int | None, typer.Option(help="image width, a multiple of 8 (default: the image's or the model's)")]
Height = Annotated[int | None, typer.Option(help="image height, a multiple of 8 (default: the image's or the model's)")]
NumImages = Annotated[int | None, typer.Option(help="how many images [default: 1]")]
Scheduler = Annotated[str | None, typer.Option(help=SCHEDULER_HELP)]
Watermark = Annotated[bool, typer.Option(help=WATERMARK_HELP)]
LORA_HELP = "a LoRA .safetensors applied without reconverting, FILE or FILE:SCALE (scale 1 if not given); repeatable"
Loras = Annotated[list[str] | None, typer.Option("--lora", help=LORA_HELP)]


CONTROL_HELP = (
    "a ControlNet folder (converted by sdcpu convert, or its name in --controlnet-dir) and its control image, "
    "FOLDER:IMAGE[:WEIGHT[:START:END]] "
    "(weight 1 and all the steps if not given; START and END are fractions of the steps); repeatable"
)
Controls = Annotated[list[str] | None, typer.Option("--control", help=CONTROL_HELP)]
ControlMode = Annotated[
    str,
    typer.Option(help="balanced, prompt (the prompt matters more) or control (the ControlNet does), as A1111's"),
]
ControlModule = Annotated[
    str,
    typer.Option(
        help="the annotator that makes the control images of the given ones: none, canny, or depth "
        "(with --depth-estimator)"
    ),
]


def parse_controls(given: list[str] | None) -> list[tuple[Path, Path, float, float, float]]:
    """--control values -> (folder, image, weight, start, end)."""
    parsed = []
    for text in given or []:
        parts = text.split(":")
        numbers: list[float] = []
        while len(parts) > 2 and len(numbers) < 3:
            try:
                numbers.insert(0, float(parts[-1]))
            except ValueError:
                break
            parts.pop()
        if len(parts) != 2 or len(numbers) == 2:
            raise SdcpuError(
                f"--control {text!r}: give FOLDER:IMAGE, FOLDER:IMAGE:WEIGHT or FOLDER:IMAGE:WEIGHT:START:END"
            )
        weight, start, end = numbers if len(numbers) == 3 else (*(numbers or [1.0]), 0.0, 1.0)
        parsed.append((Path(parts[0]), Path(parts[1]), weight, start, end))
    return parsed


def parse_loras(given: list[str] | None) -> list[tuple[Path, float]]:
    """--lora values -> (file, scale): FILE:SCALE where the text after the last colon is a number."""
    parsed = []
    for text in given or []:
        path, _, scale = text.rpartition(":")
        if path and NUMBER.fullmatch(scale):  # as a tag's weight: not float()'s "1_0" (10)
            parsed.append((Path(path), float(scale)))
        else:
            parsed.append((Path(text), 1.0))  # no scale, or a colon in the file's name
    return parsed


def sampling(**flags: Any) -> dict[str, Any]:
    """The sampling flags given (those left at None take the model's defaults)."""
    return {name: value for name, value in flags.items() if value is not None}
