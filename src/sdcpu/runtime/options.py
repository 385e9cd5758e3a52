"""How a model folder is loaded: one frozen object, validated in one place, recorded with every image.

Load options are fixed for a Pipeline's life (the engine, its precision, its memory policy, the graph
passes its networks are compiled with); what changes from one image to the next is GenerationSettings.
stable-diffusion.cpp separates its context parameters from its generation parameters the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sdcpu.cache import default_cache_dir
from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import VERIFY_MODES, Manifest
from sdcpu.runtime import precision as compute

BACKENDS = ("openvino", "onnxruntime")
NATIVE_BACKEND = {"openvino": "openvino", "onnx": "onnxruntime"}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")  # OpenVINO devices made of others
MAX_THREADS = 4096
MAX_LORA_RANK = 1024  # far above any LoRA's (4 to 128); each rank costs compute on every adapted layer
DECODERS = {"full": "vae_decoder", "tiny": "tiny_vae_decoder"}  # --decoder -> the component that decodes


@dataclass(frozen=True)
class LoadOptions:
    """`backend`: "openvino" or "onnxruntime" (None: the folder's own). `device`: an OpenVINO device
    (CPU, GPU, AUTO). `compute_precision`: "f32", "bf16" (OpenVINO on CPUs with native bf16) or "auto"
    (bf16 where the CPU has it, else f32; see runtime/precision.py). `int8_activations` (OpenVINO,
    folders with int8 or int4 weights): their MatMuls quantize activations to int8 on the fly
    (approximate); None: on for int8-hybrid folders on CPUs with VNNI or AMX. `cache`: keep OpenVINO's
    compiled models and the record of verified hashes in `cache_dir` (None: $SDCPU_CACHE_DIR or
    ~/.cache/sdcpu), so the next process starts warm. `low_memory`: one network in memory at a time,
    batch-1 guidance and a tiled VAE decode (runtime/memory.py). `winograd`: 3x3 convolutions of the
    UNet by Winograd's algorithm on the CPU (faster at f32, more memory; off with `low_memory` and under
    bf16). `token_downsampling`: f > 1 makes the UNet's highest-resolution self-attention attend to one
    key and value per f x f block (ToDo; approximate; OpenVINO folders). `verify`: check the folder's
    files against the manifest before loading: "fast" hashes those changed since they were last hashed
    (by size, mtime and inode, recorded in the cache folder), "full" hashes every file, "sizes" checks
    presence and sizes only. `decoder`: "full", the model's VAE decoder, or "tiny", the tiny decoder
    (TAESD) converted with `--tiny-vae`: about 1/18 of the decoder's work, approximate. `lora_dir`: the
    folder where the LoRAs a prompt names (`<lora:NAME:WEIGHT>`, A1111's tags) are looked up. `lora_rank`:
    N > 0 compiles the UNet's and text encoders' attention and feed-forward layers with LoRA branches of
    rank N at load (OpenVINO), so that the first LoRA compiles nothing; 0: a LoRA's first use compiles
    the layers it adapts (runtime/lora/). `controlnet_dir`: the folder of converted ControlNets (one
    folder each) that are named rather than given by path (A1111's `models/ControlNet`). `depth_estimator`: a
    converted depth estimator (or SD 2 depth model) folder, for the ControlNet depth module. `threads`: the
    threads each network runs on (OpenVINO's INFERENCE_NUM_THREADS, ONNX Runtime's intra-op threads); 0: the
    engine's default, every core. A batch on Ray gives each worker its share."""

    backend: str | None = None
    device: str = "CPU"
    compute_precision: str = "auto"
    int8_activations: bool | None = None
    cache: bool = True
    cache_dir: Path | None = None
    low_memory: bool = False
    winograd: bool = True
    token_downsampling: int = 1
    verify: str = "fast"
    decoder: str = "full"
    lora_dir: Path | None = None
    lora_rank: int = 0
    controlnet_dir: Path | None = None
    depth_estimator: Path | None = None
    threads: int = 0

    def cache_folder(self) -> Path | None:
        """Where compiled models and verified hashes are kept; None without a cache."""
        if not self.cache:
            return None
        return Path(self.cache_dir).expanduser() if self.cache_dir is not None else default_cache_dir()

    def validate(self, manifest: Manifest) -> None:
        """Raise SdcpuError, saying what to do, for any option this folder cannot run with. (What the
        machine cannot run, such as bf16 without native bf16, is refused by `resolve`.)"""
        if self.verify not in VERIFY_MODES:
            raise SdcpuError(f"unknown verify mode {self.verify!r}; choose one of: {', '.join(VERIFY_MODES)}")
        backend = self.backend or NATIVE_BACKEND[manifest.format]
        if backend not in BACKENDS:
            raise SdcpuError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
        if backend == "onnxruntime" and manifest.format != "onnx":
            raise SdcpuError(f"onnxruntime cannot read a {manifest.format} folder; use --backend openvino for it")
        if backend == "onnxruntime" and self.device.upper() != "CPU":
            raise SdcpuError(
                f"the onnxruntime backend runs on the CPU only (asked for {self.device}); use --backend openvino"
            )
        if self.compute_precision not in compute.COMPUTE_PRECISIONS:
            choices = ", ".join(compute.COMPUTE_PRECISIONS)
            raise SdcpuError(f"unknown compute precision {self.compute_precision!r}; choose one of: {choices}")
        if self.decoder not in DECODERS:
            raise SdcpuError(f"unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}")
        if DECODERS[self.decoder] not in manifest.components:
            raise SdcpuError(
                "this folder has no tiny decoder; convert the checkpoint with --tiny-vae DIR (a diffusers "
                "AutoencoderTiny folder, such as TAESD) to get one, or use --decoder full"
            )
        if self.lora_dir is not None and not Path(self.lora_dir).is_dir():
            raise SdcpuError(f"the LoRA folder {self.lora_dir} does not exist or is not a folder")
        if self.controlnet_dir is not None and not Path(self.controlnet_dir).is_dir():
            raise SdcpuError(f"the ControlNet folder {self.controlnet_dir} does not exist or is not a folder")
        if self.depth_estimator is not None and not Path(self.depth_estimator).is_dir():
            raise SdcpuError(f"the depth estimator {self.depth_estimator} does not exist or is not a folder")
        if not 0 <= self.lora_rank <= MAX_LORA_RANK:
            raise SdcpuError(f"lora_rank must be from 0 (off) to {MAX_LORA_RANK}; got {self.lora_rank}")
        if self.lora_rank and backend != "openvino":
            raise SdcpuError("LoRAs at run time (lora_rank) need the OpenVINO backend: use --backend openvino")
        if not 0 <= self.threads <= MAX_THREADS:
            raise SdcpuError(f"threads must be from 0 (every core) to {MAX_THREADS}; got {self.threads}")
        if self.token_downsampling < 1:
            raise SdcpuError(f"token_downsampling must be at least 1 (1 turns it off); got {self.token_downsampling}")
        # It rewrites OpenVINO's attention op; a graph read from ONNX has attention as separate MatMuls.
        if self.token_downsampling > 1 and (backend != "openvino" or manifest.format != "openvino"):
            raise SdcpuError(
                "token downsampling needs an OpenVINO folder run with --backend openvino; "
                f"this is a {manifest.format} folder on {backend}: convert it with --format openvino, or leave it off"
            )

    def resolve(self, manifest: Manifest) -> LoadOptions:
        """These options, validated, made concrete for a folder and this machine: the backend named, the
        compute precision as asked of the engine ("auto" is left only for an OpenVINO device other than
        the CPU, which keeps its own default), int8 activations and Winograd decided. Raises SdcpuError,
        saying what to do, for any option this folder, backend or machine cannot run."""
        self.validate(manifest)
        backend = self.backend or NATIVE_BACKEND[manifest.format]
        capabilities = compute.openvino_capabilities(self.device) if backend == "openvino" else ()
        virtual = self.device.split(":")[0].upper() in VIRTUAL_DEVICES
        if backend == "openvino" and not capabilities and not virtual:
            found = ", ".join(compute.openvino_devices())
            raise SdcpuError(f"OpenVINO has no device {self.device!r} on this machine; it has: {found}")
        precision = compute.resolve(self.compute_precision, backend, self.device, capabilities) or "auto"
        int8 = compute.resolve_int8_activations(self.int8_activations, backend, manifest.precision)
        # Winograd's transformed filters take 1.8-4x the memory of direct ones; under bf16 it also gained
        # nothing (SD 1.5 UNet step on a Zen 4: 4.46 s against 4.11 s direct, warm peak 4.56 GB against
        # 2.76 GB; docs/benchmarks.md), so bf16 runs direct convolutions.
        winograd = self.winograd and backend == "openvino" and not self.low_memory and precision != "bf16"
        return replace(self, backend=backend, compute_precision=precision, int8_activations=int8, winograd=winograd)

    def record(self) -> dict[str, str]:
        """Each option as text, for the PNG metadata and bench reports (the LoRA and ControlNet folders,
        paths of this machine, are left out: the image records its LoRAs and ControlNets by name and hash)."""
        # The thread count is left out too, a fact of the machine like those folders. It can change the last
        # bits of an image: the same settings give the same bytes at the same thread count (docs/batch.md).
        apart = ("lora_dir", "controlnet_dir", "depth_estimator", "threads")
        return {key: str(value) for key, value in asdict(self).items() if key not in apart}
