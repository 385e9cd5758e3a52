"""The Stable Diffusion pipeline: tokenizer -> text encoder -> denoising loop -> VAE decoder.

Torch-free: numpy drives the loop; OpenVINO or ONNX Runtime run the networks.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from sdcpu.runtime import images as imaging
from sdcpu.runtime import precision as compute
from sdcpu.runtime.backends import NATIVE_BACKEND, GraphRewrites, Model, load_model
from sdcpu.runtime.cache import VERIFIED_FILES, default_cache_dir
from sdcpu.runtime.errors import SdcpuError
from sdcpu.runtime.manifest import Manifest
from sdcpu.runtime.schedulers import Scheduler, SchedulerConfig, default_scheduler_name, make_scheduler
from sdcpu.runtime.settings import GenerationSettings
from sdcpu.runtime.tiling import decode_tiled
from sdcpu.runtime.tokenizer import ClipTokenizer

# --low-memory decodes tiles of 40x40 latents (320x320 pixels for SD) that share at least 8 latent
# pixels: 2x2 tiles for 512x512, each with 39% of the whole image's decoder activations.
VAE_TILE, VAE_TILE_OVERLAP = 40, 8
# Precisions whose UNet holds FakeQuantize nodes (export/quantize.py), for which OpenVINO's CPU plugin runs
# attention unfused, holding whole score matrices: their attention is chunked (backends/chunked_attention.py).
# Decided from the manifest, not the graph, because the cached blob's key is made before the graph is read.
QUANTIZED_ACTIVATIONS = ("int8-hybrid",)
Callback = Callable[[int, int, np.ndarray], bool | None]


@dataclass(frozen=True)
class PipelineResult:
    images: list[Image.Image]
    array: np.ndarray  # (N, H, W, 3) float32 in [0, 1], before 8-bit rounding
    settings: GenerationSettings
    completed_steps: int
    runtime: dict[str, str] = field(default_factory=dict)  # how it ran: backend, device, compute precision

    def save(self, path: str | Path) -> list[Path]:
        """Write the images as PNG with the settings in their text metadata; returns the paths."""
        path = Path(path)
        paths = (
            [path]
            if len(self.images) == 1
            else [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(len(self.images))]
        )
        for i, (image, target) in enumerate(zip(self.images, paths, strict=True)):
            imaging.save_png(image, target, self.settings.png_metadata(i, self.runtime))
        return paths


def _check_token_downsampling(factor: int, backend: str, fmt: str) -> int:
    if factor < 1:
        raise SdcpuError(f"token_downsampling must be at least 1 (1 turns it off); got {factor}")
    # It rewrites OpenVINO's attention op; a graph read from ONNX has attention as separate MatMuls.
    if factor > 1 and (backend != "openvino" or fmt != "openvino"):
        raise SdcpuError(
            "token downsampling needs an OpenVINO folder run with --backend openvino; "
            f"this is a {fmt} folder on {backend}: convert it with --format openvino, or leave it off"
        )
    return factor


def _check_finite(array: np.ndarray, where: str) -> np.ndarray:
    # NaN or Inf would otherwise end as a black or noise PNG written with exit code 0.
    if not np.isfinite(array).all():
        raise SdcpuError(
            f"NaN or Inf appeared in {where}; no image was written. Try fewer steps, a lower guidance or "
            "another scheduler; if it persists with --compute-precision f32, the model's weights are broken: "
            "convert it again"
        )
    return array


def _demo_folder() -> Path:
    from sdcpu.models.demo_model import CONVERTED

    if not (CONVERTED / "sdcpu.json").is_file():
        raise SdcpuError(f"the bundled demo model is missing from this install ({CONVERTED}); pass a model folder")
    return CONVERTED


class Pipeline:
    """A converted model folder, loaded for generation. Build it with `Pipeline.load(DIR)`."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        backend: str,
        device: str,
        cache_dir: Path | None = None,
        low_memory: bool = False,
        winograd: bool = True,
        token_downsampling: int = 1,
        compute_precision: str = "auto",
        int8_activations: bool | None = None,
    ):
        self.folder, self.manifest, self.backend, self.device = folder, manifest, backend, device
        capabilities = compute.openvino_capabilities(device) if backend == "openvino" else ()
        self.requested_precision = compute_precision
        self.compute_precision = compute.resolve(compute_precision, backend, device, capabilities)
        self.int8_activations = compute.resolve_int8_activations(int8_activations, backend, manifest.precision)
        self.cache_dir, self.low_memory = cache_dir, low_memory
        # Winograd's transformed filters take 1.8-4x the memory of direct ones; under bf16 it also gained nothing
        # (SD 1.5 UNet step on a Zen 4: 4.46 s against 4.11 s direct, warm peak 4.56 GB against 2.76 GB;
        # docs/benchmarks.md), so bf16 runs direct convolutions.
        self.winograd = winograd and not low_memory and self.compute_precision != "bf16"
        self.token_downsampling = _check_token_downsampling(token_downsampling, backend, manifest.format)
        self.tokenizer = ClipTokenizer(folder / "tokenizer")
        self.scheduler_config = SchedulerConfig.load(folder / "scheduler" / "scheduler_config.json")
        self.text_encoder = self._load("text_encoder")
        self.unet = self._load("unet")
        # DeepCache's shallow UNet pass, read on first use; folders converted before it have none.
        self.unet_shallow = self._load("unet_shallow", lazy=True) if "unet_shallow" in manifest.components else None
        self.vae_decoder = self._load("vae_decoder")
        self._vae_encoder: Model | None = None  # loaded on first img2img

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        backend: str | None = None,
        device: str = "CPU",
        verify: bool = True,
        cache_dir: str | Path | None = "auto",
        low_memory: bool = False,
        winograd: bool = True,
        token_downsampling: int = 1,
        compute_precision: str = "auto",
        int8_activations: bool | None = None,
    ) -> Pipeline:
        """Open a folder made by `sdcpu convert` (default: the bundled demo model), checking its manifest
        (and file hashes with `verify`). `cache_dir`: where OpenVINO keeps compiled models, so that the
        next process starts warm ("auto": $SDCPU_CACHE_DIR or ~/.cache/sdcpu; None: no cache); the
        cache also records which files were hashed, so unchanged files are not hashed again.
        `low_memory`: hold one network at a time, run guidance as two batch-1 UNet calls and decode the
        image in tiles; slower, with a much smaller peak RSS. `winograd`: OpenVINO on the CPU computes
        3x3 convolutions of float weights with Winograd's algorithm: an SD 1.5 fp32 UNet step 1.2x
        faster, its filters 2.4x larger (0.5 GB more at the run's peak); off with `low_memory`.
        `token_downsampling`: a factor f > 1 makes the UNet's highest-resolution self-attention attend to
        one key and value of every f x f block (ToDo; approximate, OpenVINO folders only): an SD 1.5 fp32
        UNet step 1.19x faster at f = 2. `compute_precision`: "f32", "bf16" (OpenVINO on CPUs with native
        bf16) or "auto" (bf16 where the CPU has it, else f32; see runtime/precision.py); the precision
        each network ran in is recorded in the result and the PNG. `int8_activations` (OpenVINO, folders
        with int8 or int4 weights): their MatMuls quantize activations to int8 on the fly (approximate;
        int8 dot products on CPUs with VNNI or AMX); None: on for int8-hybrid folders on such CPUs."""
        folder = Path(model_dir).expanduser() if model_dir is not None else _demo_folder()
        manifest = Manifest.load(folder)
        cache = default_cache_dir() if cache_dir == "auto" else None if cache_dir is None else Path(cache_dir)
        manifest.verify(folder, hashes=verify, record=cache / VERIFIED_FILES if cache is not None else None)
        backend = backend or NATIVE_BACKEND[manifest.format]
        return cls(
            folder,
            manifest,
            backend,
            device,
            cache,
            low_memory,
            winograd,
            token_downsampling,
            compute_precision,
            int8_activations,
        )

    def _load(self, component: str, lazy: bool = False) -> Model:
        path = self.manifest.graph_path(self.folder, component)
        lazy = lazy or self.low_memory
        # Every rewrite is for the UNet graphs only. Winograd would speed the VAE decoder too (10.6 against
        # 14.8 s at 512x512), but it then holds 2.97 GB against 1.35 GB.
        unet = component.startswith("unet")
        chunked = unet and self.manifest.precision in QUANTIZED_ACTIVATIONS
        rewrites = GraphRewrites(self.winograd and unet, self.token_downsampling if unet else 1, chunked)
        return load_model(
            self.backend,
            path,
            self.device,
            self.cache_dir,
            lazy=lazy,
            rewrites=rewrites,
            precision=self.compute_precision,
            int8_activations=self.int8_activations,
        )

    @property
    def vae_encoder(self) -> Model:
        if self._vae_encoder is None:
            if "vae_encoder" not in self.manifest.components:
                raise SdcpuError(f"{self.folder} has no vae_encoder, so it cannot do img2img; convert it again")
            self._vae_encoder = self._load("vae_encoder")
        return self._vae_encoder

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        steps: int = 20,
        guidance: float = 7.5,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        init_image: str | Path | Image.Image | None = None,
        strength: float = 0.8,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        deep_cache: int = 1,
    ) -> PipelineResult:
        """Generate images (txt2img, or img2img with `init_image`); see the README for each option."""
        image = imaging.open_init_image(init_image) if init_image is not None else None
        default_w, default_h = self._default_size(image)
        settings = GenerationSettings(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=steps,
            guidance=guidance,
            seed=secrets.randbelow(2**32) if seed is None else seed,
            width=width or default_w,
            height=height or default_h,
            num_images=num_images,
            scheduler=scheduler or default_scheduler_name(self.scheduler_config),
            strength=strength if image is not None else None,
            model=self.manifest.source,
            deep_cache=deep_cache,
            token_downsampling=self.token_downsampling,
        ).validate(self.manifest.vae_scale_factor, self.scheduler_config.num_train_timesteps)
        if deep_cache > 1 and self.unet_shallow is None:
            raise SdcpuError(f"{self.folder} has no unet_shallow for deep_cache; convert it again with this sdcpu")
        return self.generate(settings, image, latents, callback)

    def _default_size(self, image: Image.Image | None) -> tuple[int, int]:
        if image is None:
            return self.manifest.sample_size, self.manifest.sample_size
        f = self.manifest.vae_scale_factor
        return max(f, image.width // f * f), max(f, image.height // f * f)

    def generate(
        self,
        s: GenerationSettings,
        image: Image.Image | None = None,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
    ) -> PipelineResult:
        """The denoising loop for validated settings; `latents` replaces the initial noise."""
        rng = np.random.default_rng(s.seed)
        cfg = s.guidance > 1.0  # classifier-free guidance, as diffusers: off for guidance <= 1
        # 1. Text conditioning (Ho & Salimans, https://arxiv.org/abs/2207.12598): one batch of
        #    [negative x N, prompt x N] so that one UNet call gives both predictions.
        embeddings = self._encode_text(s.prompt, s.negative_prompt, s.num_images, cfg)
        # 2. Timesteps of the chosen scheduler.
        scheduler = make_scheduler(s.scheduler, self.scheduler_config)
        scheduler.set_timesteps(s.steps)
        # 3. Initial latents z_T ~ N(0, sigma_init^2 I), or for img2img (SDEdit, https://arxiv.org/abs/2108.01073)
        #    the encoded image noised to the timestep where the strength-truncated schedule starts.
        shape = (
            s.num_images,
            self.manifest.latent_channels,
            s.height // self.manifest.vae_scale_factor,
            s.width // self.manifest.vae_scale_factor,
        )
        start = 0
        if image is None:
            x = self._noise(latents, shape, rng) * np.float32(scheduler.init_noise_sigma)
        else:
            start = self._img2img_start(scheduler, s)
            x0 = self._encode_image(image, s, rng)
            x = scheduler.add_noise(x0, self._noise(latents, shape, rng), start)
            scheduler.set_begin_index(start)
        # 4. Denoise: eps = eps_u + w (eps_c - eps_u), then one scheduler step. DeepCache (Ma et al.,
        #    https://arxiv.org/abs/2312.00858, uniform 1:N): only every deep_cache-th step runs the whole
        #    UNet; the steps between reuse its deep features and run the outermost level alone.
        timesteps = scheduler.timesteps[start:]
        done, deep = 0, None
        for i, t in enumerate(timesteps):
            model_input = np.concatenate([x, x]) if cfg else x
            model_input = scheduler.scale_model_input(model_input, t)
            timestep = np.full(len(model_input), t, dtype=np.float32)
            reuse, keep = (deep if i % s.deep_cache else None), s.deep_cache > 1
            eps, deep = self._predict_noise(model_input, timestep, embeddings, reuse, keep)
            _check_finite(eps, f"the UNet's output at step {i + 1}")
            if cfg:
                eps_uncond, eps_text = np.split(eps, 2)
                eps = eps_uncond + np.float32(s.guidance) * (eps_text - eps_uncond)
            x = _check_finite(scheduler.step(eps, t, x, rng), f"the latents after step {i + 1}")
            done += 1
            if callback is not None and callback(done, len(timesteps), x) is False:
                break
        # 5. Decode: z / scaling_factor through the VAE decoder, to [0, 1] pixels, with the UNet's buffers
        #    freed first (--low-memory: the whole UNet, then decode tile by tile).
        self._free(self.unet)
        if self.unet_shallow is not None:
            self._free(self.unet_shallow)
        decoded = self._decode((x / np.float32(self.manifest.vae_scaling_factor)).astype(np.float32))
        array = imaging.decoded_to_float(_check_finite(decoded, "the decoded image"))
        return PipelineResult(imaging.float_to_pil(array), array, s, done, self.runtime_info())

    def runtime_info(self) -> dict[str, str]:
        """How the networks ran: backend, device (with its name), and the compute precision each network
        was compiled for (as the engine reports it) next to the one asked for."""
        networks = {"text_encoder": self.text_encoder, "unet": self.unet, "unet_shallow": self.unet_shallow}
        networks |= {"vae_decoder": self.vae_decoder, "vae_encoder": self._vae_encoder}
        ran = {name: m.compute_precision for name, m in networks.items() if m is not None and m.compute_precision}
        kinds = set(ran.values())
        return {
            "backend": self.backend,
            "device": f"{self.device} ({compute.device_name(self.backend, self.device)})",
            "compute_precision": kinds.pop() if len(kinds) == 1 else ", ".join(f"{k}={v}" for k, v in ran.items()),
            "compute_precision_requested": self.requested_precision,
            "int8_activations": str(self.int8_activations),
            "low_memory": str(self.low_memory),
            "winograd": str(self.winograd),
        }

    def _encode_text(self, prompt: str, negative: str, n: int, cfg: bool) -> np.ndarray:
        prompts = [negative, prompt] if cfg else [prompt]
        hidden = self.text_encoder(input_ids=self.tokenizer(prompts))
        self._free(self.text_encoder)
        return np.repeat(hidden, n, axis=0).astype(np.float32)  # [neg]*n + [prompt]*n

    def _predict_noise(
        self, sample: np.ndarray, timestep: np.ndarray, embeddings: np.ndarray, deep: np.ndarray | None, keep: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # Given deep features: the shallow pass around them. Otherwise the whole UNet, which also returns
        # fresh ones when `keep` (DeepCache on; only then are they fetched). --low-memory: one sample per
        # call, the same arithmetic with half (or less) of the activations alive at once.
        rows = [slice(i, i + 1) for i in range(len(sample))] if self.low_memory else [slice(None)]
        parts = []
        for r in rows:
            inputs = {"sample": sample[r], "timestep": timestep[r], "encoder_hidden_states": embeddings[r]}
            if deep is not None and self.unet_shallow is not None:
                parts.append([self.unet_shallow(**inputs, deep_features=deep[r])])
            else:
                parts.append(self.unet.outputs(**inputs) if keep else [self.unet(**inputs)])
        # Each output's rows joined (one row as is); folders converted before DeepCache have one output.
        joined = [np.concatenate(rows_of) if len(rows_of) > 1 else rows_of[0] for rows_of in zip(*parts, strict=True)]
        return joined[0], joined[1] if len(joined) > 1 else deep

    def _free(self, model: Model) -> None:
        # Between phases: --low-memory drops the whole network; otherwise only its buffers of intermediate
        # results go (about 1 GB for SD 1.5's UNet), and its compiled weights stay for the next image.
        model.release() if self.low_memory else model.release_memory()

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        if not self.low_memory:
            pixels = self.vae_decoder(latent_sample=latents)
        else:
            decode = lambda z: self.vae_decoder(latent_sample=z)  # noqa: E731
            pixels = decode_tiled(decode, latents, self.manifest.vae_scale_factor, VAE_TILE, VAE_TILE_OVERLAP)
        self._free(self.vae_decoder)
        return pixels

    def _noise(self, latents: np.ndarray | None, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if latents is None:
            return rng.standard_normal(shape, dtype=np.float32)
        if tuple(latents.shape) != shape:
            raise SdcpuError(f"latents must have shape {shape} for these settings; got {tuple(latents.shape)}")
        return latents.astype(np.float32)

    def _img2img_start(self, scheduler: Scheduler, s: GenerationSettings) -> int:
        # As diffusers: run the last int(steps * strength) steps of the schedule.
        assert s.strength is not None
        kept = min(int(s.steps * s.strength), s.steps)
        if kept == 0:
            raise SdcpuError(f"strength {s.strength} with {s.steps} steps leaves no step to run; raise either")
        return (s.steps - kept) * scheduler.order

    def _encode_image(self, image: Image.Image, s: GenerationSettings, rng: np.random.Generator) -> np.ndarray:
        pixels = imaging.image_to_array(image, s.width, s.height)
        moments = self.vae_encoder(sample=pixels)
        self._free(self.vae_encoder)
        # q(z|x) = N(mean, exp(logvar)): sample it (as diffusers does), then scale to the UNet's latent space.
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        z = np.repeat(z, s.num_images, axis=0)
        return (z * np.float32(self.manifest.vae_scaling_factor)).astype(np.float32)
