"""The pipeline every family shares: load a folder, run the denoising loop, decode.

Torch-free: numpy drives the loop; OpenVINO or ONNX Runtime run the networks. A family (sd.py: SD 1.x
and 2.x; sdxl.py) adds its text encoders as `encode_prompt`, which returns named UNet inputs with a negative
and a positive half; a task (runtime/tasks/) adds its initial latents and what it changes in the loop.
`Pipeline.load` picks the family's class from the folder's manifest.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from sdcpu.cache import VERIFIED_FILES
from sdcpu.errors import SdcpuError, SdcpuNotice
from sdcpu.format.families import unsupported_family
from sdcpu.format.foreign import foreign_family, foreign_manifest, is_foreign
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import Manifest
from sdcpu.models import BUNDLED, BUNDLED_CONTROLNETS, BUNDLED_LORAS, model_folder
from sdcpu.runtime.components.unet import GuidedInput, UNetHook, UNetRunner, unet_interfaces
from sdcpu.runtime.controlnet.hook import check_aspect
from sdcpu.runtime.controlnet.networks import ControlNets
from sdcpu.runtime.controlnet.setting import ControlSetting
from sdcpu.runtime.engines import Model, load_model
from sdcpu.runtime.engines.fallback import RetryAtF32
from sdcpu.runtime.engines.passes import graph_passes
from sdcpu.runtime.io import images as imaging
from sdcpu.runtime.io.preview import LatentPreview
from sdcpu.runtime.io.watermark import embed as embed_watermark
from sdcpu.runtime.lora import LoraSetting
from sdcpu.runtime.lora.adapters import Adapters
from sdcpu.runtime.lora.prompt import given_loras, prompt_loras
from sdcpu.runtime.memory import memory_policy
from sdcpu.runtime.memory_check import check_memory
from sdcpu.runtime.options import DECODERS, LoadOptions
from sdcpu.runtime.pipelines.task_methods import TaskMethods
from sdcpu.runtime.precision import network_precision
from sdcpu.runtime.result import Callback, PipelineResult
from sdcpu.runtime.run_info import runtime_info
from sdcpu.runtime.schedulers import (
    SamplingDefaults,
    SchedulerConfig,
    default_scheduler_name,
    make_scheduler,
    sampling_defaults,
)
from sdcpu.runtime.settings import GenerationSettings
from sdcpu.runtime.tasks import TASKS, StartInputs, Task, TextToImage, check_task

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


class Pipeline(TaskMethods):
    """A converted model folder, loaded for generation. Build it with `Pipeline.load(DIR, LoadOptions(...))`.
    A family subclasses it, naming the manifest families it runs: `class X(Pipeline, families=("sd1",))`."""

    families: ClassVar[dict[str, type[Pipeline]]] = {}  # manifest family -> its pipeline class
    sampling: ClassVar[SamplingDefaults] = SamplingDefaults()  # the family's steps and guidance, unless few-step
    _prompts: Any = None  # a family's last prompts and their encoding, kept for the next generation

    def __init_subclass__(cls, families: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        Pipeline.families |= dict.fromkeys(families, cls)

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
        self._optional: dict[str, Model] = {}  # networks a task asks for, read on first use
        # Run-time LoRAs (runtime/lora/); their branches compute in bf16 where the options do, even in a
        # network the precision rule keeps at f32 (int8-hybrid's UNet on AMX): see branches.add_branches.
        self.adapters = Adapters(folder, manifest, self.options.compute_precision == "bf16")
        # Where LoRAs named in prompts or by name alone are found: --lora-dir, or a bundled model's own.
        own = (path for model, path in BUNDLED_LORAS.items() if folder.resolve() == model.resolve())
        self.lora_dir = self.options.lora_dir or next(own, None)
        # Where ControlNets named rather than given by path are found: --controlnet-dir, or a bundled model's own.
        nets = (path for model, path in BUNDLED_CONTROLNETS.items() if folder.resolve() == model.resolve())
        self.controlnet_dir = self.options.controlnet_dir or next(nets, None)
        self.controlnets = ControlNets(
            self.options, folder, manifest, self.memory.free
        )  # opened when a generation names them
        try:
            scheduler = read_json_object(folder / "scheduler" / "scheduler_config.json")
            self.scheduler_config = SchedulerConfig.from_dict(scheduler)
            self.defaults = sampling_defaults(self.scheduler_config, self.sampling)
            self.read_tokenizers()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # JSON errors are ValueErrors
            raise SdcpuError(f"cannot read the tokenizer or scheduler of {folder} ({err}); convert it again") from None
        self.task_files = TASKS[manifest.task].read_folder(folder)  # what the model's task reads beyond networks
        self.load_text_encoders()
        self.unet = self._load("unet")
        # Read on first use, where the folder has it: DeepCache's shallow pass (a task's networks: `component`).
        self.unet_shallow = self._load("unet_shallow", lazy=True) if "unet_shallow" in manifest.components else None
        # The full decoder or the tiny one (LoadOptions.decoder), and what it divides the latents by.
        decoder = DECODERS[self.options.decoder]
        self.vae_decoder = self._load(decoder)
        self.decode_scaling = float(manifest.components[decoder].get("scaling_factor", manifest.vae_scaling_factor))
        if self.options.lora_rank:
            self.adapters.prepare(self.options.lora_rank, self.networks())

    @classmethod
    def load(cls, model_dir: str | Path | None = None, options: LoadOptions | None = None) -> Pipeline:
        """Open a folder made by `sdcpu convert` (default: the bundled demo model; "demo-lcm": its few-step
        model), or exported by optimum-intel or optimum, as `options` say, checking its manifest and its
        files (`options.verify`), with the pipeline class of its family."""
        folder, manifest = cls.check(model_dir, options)
        return cls._family(manifest.family)(folder, manifest, options or LoadOptions())

    @classmethod
    def check(cls, model_dir: str | Path | None = None, options: LoadOptions | None = None) -> tuple[Path, Manifest]:
        """The folder and its manifest, with all `load` checks before loading a network (family, options, files)."""
        folder = model_folder(model_dir)
        options = options or LoadOptions()
        cache = options.cache_folder()
        if is_foreign(folder):  # another tool's export: its manifest is built from its files, its family first
            cls._family(foreign_family(folder))
            manifest = foreign_manifest(folder, cache, lambda note: warnings.warn(note, SdcpuNotice, stacklevel=4))
        else:
            manifest = Manifest.load(folder)
        cls._family(manifest.family)
        options.validate(manifest)
        manifest.verify(folder, options.verify, record=cache / VERIFIED_FILES if cache is not None else None)
        return folder, manifest

    @classmethod
    def _family(cls, name: str) -> type[Pipeline]:
        # The pipeline class of the family `name`; SdcpuError, in one sentence, for one sdcpu cannot run.
        family = Pipeline.families.get(name)
        if family is None or not issubclass(family, cls):
            raise unsupported_family(name, Pipeline.families, "run")
        return family

    # What a family adds: its tokenizers and text encoders, and the UNet inputs they make of the prompts.

    def read_tokenizers(self) -> None:
        raise NotImplementedError

    def load_text_encoders(self) -> None:
        raise NotImplementedError

    def encode_prompt(self, prompt: str, negative: str, n: int, guided: bool) -> dict[str, GuidedInput]:
        """The UNet's text inputs for `n` images, by name; the negative half only when `guided`."""
        raise NotImplementedError

    def text_encoders(self) -> dict[str, Model | None]:
        raise NotImplementedError

    def micro_conditioning(self, s: GenerationSettings) -> dict[str, GuidedInput]:
        """The UNet's inputs from the settings beyond the prompt (SDXL's size and crop); none by default."""
        return {}

    # Networks

    def _load(self, component: str, lazy: bool = False) -> Model:
        precision = self.manifest.components[component]["precision"]
        passes = [p for p in self.passes if p.applies_to(component, precision, self.options.device)]
        self.applied[component] = [p.key for p in passes]
        path = self.manifest.graph_path(self.folder, component)
        interface = self.interfaces.get(component)
        compute = network_precision(component, precision, self.options.compute_precision)
        options = replace(self.options, compute_precision=compute)
        model = load_model(path, options, passes, lazy=lazy or self.memory.lazy, interface=interface)
        if compute != "bf16":
            return model
        f32 = replace(self.options, compute_precision="f32")
        fresh = lambda: load_model(path, f32, passes, lazy=True, interface=interface)  # noqa: E731
        return RetryAtF32(model, fresh, component, self.fell_back.append)

    def component(self, name: str) -> Model:
        """The network `name` (vae_encoder, depth_estimator), read on first use; SdcpuError where the
        folder lacks it."""
        if name not in self._optional:
            self.manifest.require(name)
            self._optional[name] = self._load(name, lazy=True)
        return self._optional[name]

    def networks(self) -> dict[str, Model | None]:
        """Every network this pipeline has opened, by component."""
        unets = {"unet": self.unet, "unet_shallow": self.unet_shallow}
        return self.text_encoders() | unets | {"vae_decoder": self.vae_decoder} | self._optional

    def free(self, model: Model) -> None:
        self.memory.free(model)

    # Settings

    def run(
        self,
        task: Task,
        prompt: str,
        *,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        hooks: Sequence[UNetHook] = (),
        **options: Any,
    ) -> PipelineResult:
        """Run `task` for `prompt`; `options`: the settings every task shares (steps, seed, ..., see
        `Pipeline.settings`); `latents` replaces the initial noise; `hooks` add UNet inputs per step."""
        settings = self.settings(prompt, task, given=latents is not None, **options)
        return self.generate(settings, task, latents, callback, hooks)

    def settings(
        self,
        prompt: str,
        task: Task | None = None,
        *,
        negative_prompt: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        width: int | None = None,
        height: int | None = None,
        num_images: int = 1,
        scheduler: str | None = None,
        deep_cache: int = 1,
        watermark: bool = False,
        loras: Sequence[LoraSetting | tuple[str | Path, float]] = (),
        controls: Sequence[ControlSetting] = (),
        given: bool = False,
    ) -> GenerationSettings:
        """The settings `generate` runs for `task` (default: txt2img), with this folder's defaults, checked
        against the folder and this machine's memory before any work (SdcpuError says what to change).
        `loras`: LoRA files and their scales, applied at run time, besides those the prompt names with A1111's
        tags (`<lora:NAME:WEIGHT>`, looked up in LoadOptions.lora_dir). `controls`: ControlNets (ControlSetting.of).
        `given`: latents are passed."""
        task = task or TextToImage()
        check_task(self.manifest.task, task)
        prompt, tagged = prompt_loras(prompt, self.lora_dir) if "<lora:" in prompt.lower() else (prompt, [])
        default_w, default_h = task.default_size(self.manifest)
        fields = {"strength": None} | task.record(self.manifest)
        settings = GenerationSettings(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=steps if steps is not None else self.defaults.steps,
            guidance=guidance if guidance is not None else self.defaults.guidance,
            seed=secrets.randbelow(2**32) if seed is None else seed,
            width=width if width is not None else default_w,  # 0 is refused, not taken as the default
            height=height if height is not None else default_h,
            num_images=num_images,
            scheduler=scheduler or default_scheduler_name(self.scheduler_config),
            model=self.model_name,
            deep_cache=deep_cache,
            watermark=watermark,
            noise="given" if given else "seed",
            loras=given_loras([*loras, *tagged], self.options.backend, self.lora_dir),
            controls=tuple(controls),
            **fields,
        ).validate(self.manifest.vae_scale_factor, self.scheduler_config.num_train_timesteps)
        for control in controls:
            self.controlnets.check(control.folder)
            check_aspect(control, settings.width, settings.height)
        if controls and deep_cache > 1:
            raise SdcpuError(
                "ControlNet and DeepCache (--deep-cache) do not combine: the shallow pass has no residuals"
            )
        for component in (*(["unet_shallow"] if deep_cache > 1 else []), *task.components()):
            self.manifest.require(component)
        # Before any work: a size that cannot fit would otherwise fail deep in an engine, or swap for hours.
        weights = sum(info["bytes"] for info in self.manifest.files.values())
        check_memory(settings, self.memory, weights, self.manifest.vae_scale_factor, self.options.low_memory)
        return settings

    # Generation

    def generate(
        self,
        s: GenerationSettings,
        task: Task | None = None,
        latents: np.ndarray | None = None,
        callback: Callback | None = None,
        hooks: Sequence[UNetHook] = (),
    ) -> PipelineResult:
        """The denoising loop for validated settings and their `task` (default: txt2img); `latents`
        replaces the initial noise; `hooks` add UNet inputs at every step (components/unet.py)."""
        task = task or TextToImage()
        rng = np.random.default_rng(s.seed)
        # 0. LoRAs: each network gets the low-rank branches of this generation's LoRAs (none: zeros, or
        #    nothing where it never had any); a changed text encoder encodes the prompts again.
        if self.adapters.apply(s.loras, self.networks()) & {"text_encoder", "text_encoder_2"}:
            self._prompts = None
        # 1. Text conditioning: the family's UNet inputs, each with a negative and a positive half, batched
        #    [negative x N, prompt x N] when guided, so that one UNet call gives both predictions (the runner
        #    splits the batch under a low-memory policy).
        embeddings = self.encode_prompt(s.prompt, s.negative_prompt, s.num_images, guided=s.guidance > 1.0)
        embeddings |= self.micro_conditioning(s)
        # 2. Timesteps of the chosen scheduler.
        scheduler = make_scheduler(s.scheduler, self.scheduler_config)
        scheduler.set_timesteps(s.steps)
        # 3. Initial latents, the first step, and what the task adds to the loop (runtime/tasks/).
        f = self.manifest.vae_scale_factor
        shape = (s.num_images, self.manifest.latent_channels, s.height // f, s.width // f)
        noise = partial(self._noise, latents, shape, rng)
        start = task.start(self, StartInputs(s, scheduler, rng, noise))
        x, cond = start.latents, start.conditioning
        inputs = embeddings | cond.unet_inputs()
        timestep = self.manifest.input_shape("unet", "timestep")
        timesteps = scheduler.timesteps[start.first :]
        control = self.controlnets.hook(s, self.unet)  # ControlNets' residuals, added to the UNet's skips
        hooks = (*hooks, control) if control is not None else tuple(hooks)
        unet = UNetRunner(
            self.unet, self.unet_shallow, self.memory, inputs, s.guidance, s.deep_cache, timestep, hooks, len(timesteps)
        )
        # 4. Denoise: the runner's guided noise prediction, then one scheduler step.
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
        self.controlnets.release()
        decoded = self._decode((x / np.float32(self.decode_scaling)).astype(np.float32))
        array = cond.finish(imaging.decoded_to_float(_check_finite(decoded, "the decoded image")))
        images = imaging.float_to_pil(array)
        if s.watermark:  # on the 8-bit pixels, which are what is kept
            images = [Image.fromarray(embed_watermark(np.asarray(image))) for image in images]
            array = (np.stack([np.asarray(image) for image in images]) / np.float32(255)).astype(np.float32)
        return PipelineResult(images, array, s, done, self.runtime_info())

    def _noise(self, latents: np.ndarray | None, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if latents is None:
            return rng.standard_normal(shape, dtype=np.float32)
        if tuple(latents.shape) != shape:
            raise SdcpuError(f"latents must have shape {shape} for these settings; got {tuple(latents.shape)}")
        return latents.astype(np.float32)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        pixels = self.memory.decode(self.vae_decoder, latents, self.manifest.vae_scale_factor)
        self.memory.free(self.vae_decoder)
        return pixels

    def encode_pixels(self, pixels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Pixels (1, 3, H, W) in [-1, 1] -> scaled latents, one row per image."""
        encoder = self.component("vae_encoder")
        moments = encoder(sample=pixels)
        self.memory.free(encoder)
        # q(z|x) = N(mean, exp(logvar)): sample it (as diffusers does), then scale to the UNet's latent space.
        mean, logvar = np.split(moments, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32)
        z = np.repeat(z, n, axis=0)
        return (z * np.float32(self.manifest.vae_scaling_factor)).astype(np.float32)

    def preview(self, latents: np.ndarray) -> Image.Image:
        """A cheap RGB preview of the first image of the UNet-space `latents` a step callback gets
        (runtime/io/preview.py: a linear map fitted once to this model's decoder, not the decoder)."""
        if self._preview is None:
            m, decoder = self.manifest, self.vae_decoder
            decode = lambda z: decoder(latent_sample=z)  # noqa: E731
            self._preview = LatentPreview(decode, m.latent_channels, self.decode_scaling, m.vae_scale_factor)
        return self._preview(latents)

    def runtime_info(self) -> dict[str, str]:
        """How the networks ran (runtime/run_info.py): load options as resolved, compute precisions."""
        return runtime_info(self)
