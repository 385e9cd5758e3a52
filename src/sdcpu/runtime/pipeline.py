"""The Stable Diffusion pipeline: tokenizer -> text encoder -> denoising loop -> VAE decoder.

Torch-free: numpy drives the loop; OpenVINO or ONNX Runtime run the networks.
"""

from __future__ import annotations

import json
import secrets
import warnings
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from sdcpu.models.demo_model import BUNDLED, model_folder
from sdcpu.runtime import images as imaging
from sdcpu.runtime.backends import Model, load_model
from sdcpu.runtime.backends.fallback import RetryAtF32
from sdcpu.runtime.backends.graph_passes import graph_passes
from sdcpu.runtime.cache import VERIFIED_FILES
from sdcpu.runtime.conditioning import PLAIN, Conditioning
from sdcpu.runtime.depth import DepthChannel, DepthPreprocess, normalised_depth
from sdcpu.runtime.errors import SdcpuError, SdcpuNotice
from sdcpu.runtime.foreign import foreign_manifest, is_foreign
from sdcpu.runtime.inpaint import blend_start, inpaint_start, prepare_mask
from sdcpu.runtime.manifest import Manifest
from sdcpu.runtime.memory import memory_policy
from sdcpu.runtime.memory_check import check_memory
from sdcpu.runtime.modes import EditModes, check_mode
from sdcpu.runtime.options import DECODERS, LoadOptions
from sdcpu.runtime.preview import LatentPreview
from sdcpu.runtime.result import Callback, PipelineResult
from sdcpu.runtime.run_info import runtime_info
from sdcpu.runtime.schedulers import (
    Scheduler,
    SchedulerConfig,
    default_scheduler_name,
    make_scheduler,
    sampling_defaults,
)
from sdcpu.runtime.settings import GenerationSettings, MaskSettings, UpscaleSettings
from sdcpu.runtime.tokenizer import ClipTokenizer
from sdcpu.runtime.unet import UNetRunner, unet_interfaces
from sdcpu.runtime.upscale import SCALE, upscale_start
from sdcpu.runtime.watermark import embed as embed_watermark

__all__ = ["Callback", "Pipeline", "PipelineResult"]


def _check_finite(array: np.ndarray, where: str) -> np.ndarray:
    # NaN or Inf would otherwise end as a black or noise PNG written with exit code 0.
    if not np.isfinite(array).all():
        raise SdcpuError(
            f"NaN or Inf appeared in {where}; no image was written. Try fewer steps, a lower guidance or "
            "another scheduler; if it persists with --compute-precision f32, the model's weights are broken: "
            "convert it again"
        )
    return array


class Pipeline(EditModes):
    """A converted model folder, loaded for generation. Build it with `Pipeline.load(DIR, LoadOptions(...))`."""

    def __init__(self, folder: Path, manifest: Manifest, options: LoadOptions | None = None):
        self.folder, self.manifest, self.requested = folder, manifest, options or LoadOptions()
        self.options = self.requested.resolve(manifest)  # validated, with every "auto" decided
        self.memory = memory_policy(self.options.low_memory)
        # The folder that runs names the model (the source it was converted from is recorded apart).
        bundled = (f"sdcpu-{name}" for name, path in BUNDLED.items() if folder.resolve() == path.resolve())
        self.model_name = next(bundled, folder.resolve().name)
        self.model_hash = self.manifest.content_hash()
        self.passes = graph_passes(self.options)
        self.interfaces = unet_interfaces(manifest)
        self.applied: dict[str, list[str]] = {}  # component -> the graph passes it is compiled with
        self.fell_back: list[str] = []  # networks that gave NaN or Inf at bf16 and now run at f32
        self._preview: LatentPreview | None = None
        self._prompts: tuple[list[str], np.ndarray] | None = None  # the last prompts encoded, and their encoding
        try:
            self.tokenizer = ClipTokenizer(folder / "tokenizer")
            self.scheduler_config = SchedulerConfig.load(folder / "scheduler" / "scheduler_config.json")
            self.defaults = sampling_defaults(self.scheduler_config)
            low_res = folder / "low_res_scheduler" / "scheduler_config.json"  # the upscaler's, for its input's noise
            self.low_res_scheduler = SchedulerConfig.load(low_res) if manifest.task == "upscaling" else None
            processor = folder / "feature_extractor" / "preprocessor_config.json"  # depth2img's DPT's
            depth = manifest.task == "depth-to-image" and processor.exists()  # SD 1.x's serves its safety checker
            self.depth_preprocess = DepthPreprocess.from_config(json.loads(processor.read_text()) if depth else {})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # JSON errors are ValueErrors
            raise SdcpuError(f"cannot read the tokenizer or scheduler of {folder} ({err}); convert it again") from None
        self.text_encoder = self._load("text_encoder")
        self.unet = self._load("unet")
        # Read on first use, where the folder has them: DeepCache's shallow pass, and the encoder for img2img.
        self.unet_shallow = self._load("unet_shallow", lazy=True) if "unet_shallow" in manifest.components else None
        # The full decoder or the tiny one (LoadOptions.decoder), and what it divides the latents by.
        decoder = DECODERS[self.options.decoder]
        self.vae_decoder = self._load(decoder)
        self.decode_scaling = float(manifest.components[decoder].get("scaling_factor", manifest.vae_scaling_factor))
        self.vae_encoder = self._load("vae_encoder", lazy=True) if "vae_encoder" in manifest.components else None
        self.depth_estimator = self._optional("depth_estimator")

    @classmethod
    def load(cls, model_dir: str | Path | None = None, options: LoadOptions | None = None) -> Pipeline:
        """Open a folder made by `sdcpu convert` (default: the bundled demo model; "demo-lcm": its few-step
        model), or exported by optimum-intel or optimum, as `options` say, checking its manifest and its
        files (`options.verify`)."""
        folder = model_folder(model_dir)
        options = options or LoadOptions()
        cache = options.cache_folder()
        if is_foreign(folder):  # another tool's export: its manifest is built from its files
            manifest = foreign_manifest(folder, cache, lambda note: warnings.warn(note, SdcpuNotice, stacklevel=3))
        else:
            manifest = Manifest.load(folder)
        options.validate(manifest)
        manifest.verify(folder, options.verify, record=cache / VERIFIED_FILES if cache is not None else None)
        return cls(folder, manifest, options)

    def _optional(self, component: str) -> Model | None:
        return self._load(component, lazy=True) if component in self.manifest.components else None

    def _load(self, component: str, lazy: bool = False) -> Model:
        precision = self.manifest.components[component]["precision"]
        passes = [p for p in self.passes if p.applies_to(component, precision, self.options.device)]
        self.applied[component] = [p.key for p in passes]
        path = self.manifest.graph_path(self.folder, component)
        interface = self.interfaces.get(component)
        model = load_model(path, self.options, passes, lazy=lazy or self.memory.lazy, interface=interface)
        if self.options.compute_precision != "bf16":
            return model
        f32 = replace(self.options, compute_precision="f32")
        fresh = lambda: load_model(path, f32, passes, lazy=True, interface=interface)  # noqa: E731
        return RetryAtF32(model, fresh, component, self.fell_back.append)

    def __call__(
        self,
        prompt: str,
        negative_prompt: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
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
        watermark: bool = False,
    ) -> PipelineResult:
        """Generate images (txt2img, or img2img with `init_image`); see the README for each option. `steps`
        and `guidance` default to the model's (20 and 7.5; few-step models' schedulers imply fewer, unguided)."""
        image = imaging.open_init_image(init_image) if init_image is not None else None
        settings = self.settings(
            prompt,
            image,
            negative_prompt=negative_prompt,
            steps=steps,
            guidance=guidance,
            seed=seed,
            width=width,
            height=height,
            num_images=num_images,
            scheduler=scheduler,
            strength=strength,
            deep_cache=deep_cache,
            watermark=watermark,
            given=latents is not None,
        )
        return self.generate(settings, image, latents, callback)

    def settings(
        self,
        prompt: str,
        image: Image.Image | None = None,
        *,
        negative_prompt: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        strength: float = 0.8,
        deep_cache: int = 1,
        watermark: bool = False,
        mask: MaskSettings | None = None,
        upscale: UpscaleSettings | None = None,
        depth: str | None = None,
        given: bool = False,
    ) -> GenerationSettings:
        """The settings `__call__` (or with `mask`, `inpaint`) runs, with this folder's defaults, checked
        against the folder and this machine's memory before any work (SdcpuError says what to change).
        `given`: latents are passed."""
        modes = {"inpainting": mask, "upscaling": upscale, "depth-to-image": depth}
        check_mode(self.manifest.task, next((m for m, given in modes.items() if given is not None), "text-to-image"))
        default_w, default_h = self._default_size(image)
        settings = GenerationSettings(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=steps if steps is not None else self.defaults.steps,
            guidance=guidance if guidance is not None else self.defaults.guidance,
            seed=secrets.randbelow(2**32) if seed is None else seed,
            width=width or default_w,
            height=height or default_h,
            num_images=num_images,
            scheduler=scheduler or default_scheduler_name(self.scheduler_config),
            strength=strength if image is not None and upscale is None else None,
            model=self.model_name,
            deep_cache=deep_cache,
            watermark=watermark,
            noise="given" if given else "seed",
            mask=mask.validate() if mask is not None else None,
            upscale=upscale.validate(int(self.manifest.extra.get("max_noise_level", 350))) if upscale else None,
            depth=depth,
        ).validate(self.manifest.vae_scale_factor, self.scheduler_config.num_train_timesteps)
        encodes = image is not None and upscale is None
        needs = {"unet_shallow": deep_cache > 1, "vae_encoder": encodes, "depth_estimator": depth == "estimated"}
        for component, needed in needs.items():
            if needed:
                self.manifest.require(component)
        self._check_memory(settings)
        return settings

    def _check_memory(self, s: GenerationSettings) -> None:
        # Before any work: a size that cannot fit would otherwise fail deep in an engine, or swap for hours.
        weights = sum(info["bytes"] for info in self.manifest.files.values())
        check_memory(s, self.memory, weights, self.manifest.vae_scale_factor, self.options.low_memory)

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
        mask: Image.Image | None = None,
        depth_map: np.ndarray | None = None,
    ) -> PipelineResult:
        """The denoising loop for validated settings; `latents` replaces the initial noise, `mask` (with
        `image` and `s.mask`) inpaints, `depth_map` (with `s.depth` "given") is depth2img's."""
        rng = np.random.default_rng(s.seed)
        # 1. Text conditioning: one batch of [negative x N, prompt x N] when guided, so that one UNet call
        #    gives both predictions (the runner splits it under a low-memory policy).
        embeddings = self._encode_text(s.prompt, s.negative_prompt, s.num_images, guided=s.guidance > 1.0)
        # 2. Timesteps of the chosen scheduler.
        scheduler = make_scheduler(s.scheduler, self.scheduler_config)
        scheduler.set_timesteps(s.steps)
        # 3. Initial latents and what the mode adds to the loop (runtime/conditioning.py).
        x, start, cond = self._initial(s, scheduler, image, mask, latents, rng)
        cond = self._depth(s, image, depth_map) if s.depth is not None else cond
        timestep = self.manifest.input_shape("unet", "timestep")
        unet = UNetRunner(
            self.unet,
            self.unet_shallow,
            self.memory,
            embeddings,
            s.guidance,
            s.deep_cache,
            timestep,
            cond.unet_inputs(),
        )
        # 4. Denoise: the runner's guided noise prediction, then one scheduler step.
        timesteps = scheduler.timesteps[start:]
        done = 0
        for i, t in enumerate(timesteps):
            sample = cond.unet_input(scheduler.scale_model_input(x, t))
            eps = _check_finite(cond.predict(partial(unet, t=t, step=i), sample), f"the UNet's output at step {i + 1}")
            x = _check_finite(cond.after_step(scheduler.step(eps, t, x, rng), i), f"the latents after step {i + 1}")
            done += 1
            if callback is not None and callback(done, len(timesteps), x) is False:
                break
        # 5. Decode: z / scaling_factor through the VAE decoder, to [0, 1] pixels, with the UNet's buffers
        #    freed first (or the whole UNet, and then tile by tile, under a low-memory policy).
        unet.release()
        decoded = self._decode((x / np.float32(self.decode_scaling)).astype(np.float32))
        array = cond.finish(imaging.decoded_to_float(_check_finite(decoded, "the decoded image")))
        images = imaging.float_to_pil(array)
        if s.watermark:  # on the 8-bit pixels, which are what is kept
            images = [Image.fromarray(embed_watermark(np.asarray(image))) for image in images]
            array = (np.stack([np.asarray(image) for image in images]) / np.float32(255)).astype(np.float32)
        return PipelineResult(images, array, s, done, self.runtime_info())

    def _initial(
        self,
        s: GenerationSettings,
        scheduler: Scheduler,
        image: Image.Image | None,
        mask: Image.Image | None,
        latents: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, int, Conditioning]:
        # z_T ~ N(0, sigma_init^2 I); or for img2img (SDEdit, https://arxiv.org/abs/2108.01073) the encoded
        # image noised to the timestep where the strength-truncated schedule starts; or inpainting's start.
        f = self.manifest.vae_scale_factor
        shape = (s.num_images, self.manifest.latent_channels, s.height // f, s.width // f)
        if image is None:
            return self._noise(latents, shape, rng) * np.float32(scheduler.init_noise_sigma), 0, PLAIN
        if s.upscale is not None:
            assert self.low_res_scheduler is not None  # read at load for upscalers
            low = imaging.image_to_array(image, s.width // SCALE, s.height // SCALE)
            draw = lambda: self._noise(latents, shape, rng)  # noqa: E731
            x, cond = upscale_start(low, s, scheduler, self.low_res_scheduler, draw, rng)
            return x, 0, cond
        start = self._img2img_start(scheduler, s)
        scheduler.set_begin_index(start)
        pixels = imaging.image_to_array(image, s.width, s.height)
        if mask is None:
            x0 = self._encode_pixels(pixels, s.num_images, rng)
            return scheduler.add_noise(x0, self._noise(latents, shape, rng), start), start, PLAIN
        assert s.mask is not None and s.strength is not None
        m = prepare_mask(mask, image, s.width, s.height, s.mask)
        encode = lambda p: self._encode_pixels(p, s.num_images, rng)  # noqa: E731
        # A 4-channel UNet inpaints by latent blending; a 9-channel one takes the mask as input channels.
        start_latents = inpaint_start if self.manifest.task == "inpainting" else blend_start
        x, cond = start_latents(pixels, m, s, scheduler, start, lambda: self._noise(latents, shape, rng), encode)
        return x, start, cond

    def preview(self, latents: np.ndarray) -> Image.Image:
        """A cheap RGB preview of the first image of the UNet-space `latents` a step callback gets
        (runtime/preview.py: a linear map fitted once to this model's decoder, not the decoder)."""
        if self._preview is None:
            m, decoder = self.manifest, self.vae_decoder
            decode = lambda z: decoder(latent_sample=z)  # noqa: E731
            self._preview = LatentPreview(decode, m.latent_channels, self.decode_scaling, m.vae_scale_factor)
        return self._preview(latents)

    def runtime_info(self) -> dict[str, str]:
        """How the networks ran (runtime/run_info.py): load options as resolved, compute precisions."""
        return runtime_info(self)

    def _encode_text(self, prompt: str, negative: str, n: int, guided: bool) -> np.ndarray:
        prompts = [negative, prompt] if guided else [prompt]
        # The same prompts again (a seed sweep, a batch count): the last call's encoding, not the encoder's.
        if self._prompts is None or self._prompts[0] != prompts:
            self._prompts = (prompts, self.text_encoder(input_ids=self.tokenizer(prompts)))
            self.memory.free(self.text_encoder)
        return np.repeat(self._prompts[1], n, axis=0).astype(np.float32)  # [neg]*n + [prompt]*n

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        pixels = self.memory.decode(self.vae_decoder, latents, self.manifest.vae_scale_factor)
        self.memory.free(self.vae_decoder)
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

    def _depth(self, s: GenerationSettings, image: Image.Image | None, given: np.ndarray | None) -> Conditioning:
        # The DPT's prediction for the image, or the map given; at the latent size, in [-1, 1].
        assert image is not None
        if given is None:
            assert self.depth_estimator is not None  # required by `settings`
            given = self.depth_estimator(pixel_values=self.depth_preprocess(image))
            self.memory.free(self.depth_estimator)
        f = self.manifest.vae_scale_factor
        depth = np.repeat(normalised_depth(given, s.height // f, s.width // f), s.num_images, axis=0)
        return DepthChannel(depth)

    def _encode_pixels(self, pixels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        assert self.vae_encoder is not None  # required by `settings`
        moments = self.vae_encoder(sample=pixels)
        self.memory.free(self.vae_encoder)
        # q(z|x) = N(mean, exp(logvar)): sample it (as diffusers does), then scale to the UNet's latent space.
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        z = np.repeat(z, n, axis=0)
        return (z * np.float32(self.manifest.vae_scaling_factor)).astype(np.float32)
