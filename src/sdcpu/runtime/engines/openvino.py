"""OpenVINO backend. The graph is kept with dynamic shapes on disk and compiled for the static
shapes of the first call (OpenVINO's CPU plugin runs static shapes faster), after the graph passes it
was given; a call with other shapes compiles again. `adapt` adds inputs fed with every call (a LoRA's
low-rank branches, runtime/lora/), `extend` inputs given with every call (ControlNet's residuals). Inputs
given as `Repeated` (a guided batch's shared halves) are compiled with the shared-rows rewrite
(passes/shared_rows.py) and fed once. With a cache folder, compiled models are kept there
(engines/compiled_cache.py) and the graph is read only when there is no blob to import."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openvino as ov
from openvino.preprocess import PrePostProcessor

from sdcpu.errors import SdcpuError
from sdcpu.runtime.engines.base import GraphInterface, Input, Repeated, conform
from sdcpu.runtime.engines.compiled_cache import CompiledModelCache
from sdcpu.runtime.engines.pages import drop_mapped_pages
from sdcpu.runtime.engines.passes import GraphPass, shared_rows
from sdcpu.runtime.options import LoadOptions

CONFIG = {"PERFORMANCE_HINT": "LATENCY"}
# Dynamic quantization, on the CPU, is off unless asked for: on CPUs with VNNI or AMX the plugin otherwise
# quantizes the activations of every MatMul with int8 or int4 weights to int8 on the fly (groups of 32), so an
# "int8 weights, float compute" folder computed in int8 there and in float elsewhere (0.05 apart on the tiny
# int8 pipeline). Asked for, they are quantized in groups of 64 values, each with its own scale: an SD 1.5
# int8-hybrid UNet call at 512x512 then takes 1.51 s against 1.65 s with OpenVINO's default of 32 (medians
# of 6, Zen 4, bf16; the cost on the demo oracle is in docs/quality.md). 64 divides every SD UNet's widths
# (320, 640, 768, 1280, 2048); with 128, narrower layers (the demo's) silently lose dynamic quantization.
INT8_ACTIVATIONS = {False: "0", True: "64"}  # DYNAMIC_QUANTIZATION_GROUP_SIZE


def engine_config(options: LoadOptions) -> dict[str, str]:
    """OpenVINO's compile configuration for resolved load options."""
    config = dict(CONFIG)
    if options.device.upper() == "CPU" or options.int8_activations:
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = INT8_ACTIVATIONS[bool(options.int8_activations)]
    # Always set on the CPU: its plugin's default is bf16 on CPUs with native bf16 and f32 elsewhere.
    # "auto" is left (resolved) only for another device (GPU), which keeps its own default.
    if options.compute_precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = options.compute_precision  # our names are OpenVINO's
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = str(options.threads)
    return config


class OpenVINOModel:
    def __init__(
        self,
        path: Path,
        options: LoadOptions,
        passes: Sequence[GraphPass] = (),
        lazy: bool = False,
        interface: GraphInterface | None = None,
    ):
        self.path, self.device, self.passes = path, options.device, tuple(passes)
        self.interface = interface or GraphInterface()
        self.config = engine_config(options)
        self.compute_precision: str | None = None  # what the compiled model reports, once compiled
        self._core = ov.Core()
        folder = options.cache_folder()
        self._cache = CompiledModelCache(folder, self._core) if folder is not None else None
        # With a cache folder, the graph is read only when there is no blob to import.
        self._model: ov.Model | None = None if lazy or folder is not None else self._read()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._repeated: tuple[str, ...] = ()  # the inputs compiled as Repeated, and whether they are fed once:
        self._shares = False  # the graph could be rewritten (passes/shared_rows.py)
        self._compiled: ov.CompiledModel | None = None
        self._blob: np.memmap | None = None  # an imported model may use the blob's memory in place
        self._request: ov.InferRequest | None = None
        self._dtypes: dict[str, np.dtype] = {}  # the compiled model's input dtypes
        self._extended: tuple[GraphPass, ...] = ()  # passes adding inputs fed at every call (ControlNet's)
        self._branches: GraphPass | None = None  # a pass adding inputs, which `_bound` feeds at every call
        self._bound: dict[str, np.ndarray] = {}
        # Whether `_bound` is set on the current request. A flag, not the request: a reference to it would keep
        # a released compiled model alive over the blob memory it uses in place, after the blob is unmapped.
        self._bound_set = False

    def _read(self) -> ov.Model:
        try:
            model = self._core.read_model(str(self.path))
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot read {self.path}: {err}") from err
        if self.interface.outputs:
            try:
                model.add_outputs(list(self.interface.outputs))
            except RuntimeError as err:
                raise SdcpuError(f"{self.path} has no tensor {', '.join(self.interface.outputs)}: {err}") from err
        for name in self.interface.float_inputs:
            _feed_as_float(model, name)
        if self.interface.half_outputs:
            processor = PrePostProcessor(model)
            for i in range(len(model.outputs)):
                processor.output(i).tensor().set_element_type(ov.Type.f16)
            model = processor.build()
        return model

    def _compile(self, shapes: dict[str, tuple[int, ...]], repeated: tuple[str, ...]) -> ov.InferRequest:
        cache = self._cache if self._cache is not None and self._cache.can_export(self.device) else None
        keys = [p.key for p in self._passes()] + self.interface.keys
        keys += [f"shared rows {','.join(repeated)} r{shared_rows.REVISION}"] if repeated else []
        blob = cache.blob_path(self.path, self.device, self.config, shapes, keys) if cache is not None else None
        imported = cache.load(blob, self.device, self.config) if cache is not None and blob is not None else None
        if imported is not None:
            compiled, self._blob = imported
        else:
            compiled = self._compile_graph(shapes, repeated, use_cache_dir=blob is None)
            if cache is not None and blob is not None:
                cache.store(compiled, blob)
        # The compiled model holds its own (repacked) weights: drop the read graph, and the pages of the
        # weights file and of the blob that stay mapped, or both copies stay resident.
        self._model, self._shapes, self._compiled = None, shapes, compiled
        self._repeated = repeated
        self._shares = any(  # the rewrite was made: the repeated inputs take half the rows
            port.get_partial_shape()[0].get_length() * 2 == shapes[name][0]
            for port in compiled.inputs
            for name in port.get_names() & set(repeated)
        )
        try:
            self.compute_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        except RuntimeError:  # AUTO, MULTI and HETERO do not report it: what was asked, or their default
            self.compute_precision = str(self.config.get("INFERENCE_PRECISION_HINT", "device default"))
        drop_mapped_pages(self.path.parent, *([self._cache.folder] if self._cache is not None else []))
        self._dtypes = {port.get_any_name(): port.get_element_type().to_dtype() for port in compiled.inputs}
        self._bound_set = False  # a new request: the bound inputs are set on it at its first call
        return compiled.create_infer_request()

    def _compile_graph(
        self, shapes: dict[str, tuple[int, ...]], repeated: tuple[str, ...], use_cache_dir: bool
    ) -> ov.CompiledModel:
        model = self._reshaped(self._model or self._read(), shapes)
        if repeated:  # first: the passes after it see the rows each node computes
            try:
                shared_rows.share_rows(model, repeated)
            except shared_rows.NotShareable:
                model = self._reshaped(self._read(), shapes)  # as read: the repeated inputs are fed whole
        for graph_pass in self._passes():
            graph_pass.apply(model)
        config = dict(self.config)
        if use_cache_dir and self._cache is not None:
            config["CACHE_DIR"] = str(self._cache.folder)
        try:
            return self._core.compile_model(model, self.device, config)
        except RuntimeError as err:
            raise SdcpuError(f"OpenVINO cannot compile for device {self.device!r}: {err}") from err

    def _reshaped(self, model: ov.Model, shapes: dict[str, tuple[int, ...]]) -> ov.Model:
        if not self.interface.dynamic:  # the graph's own inputs; those a pass adds take their shapes from them
            names = {name for port in model.inputs for name in port.get_names()}
            model.reshape({name: ov.PartialShape(list(shape)) for name, shape in shapes.items() if name in names})
        return model

    def _passes(self) -> tuple[GraphPass, ...]:
        return self._extended + ((self._branches,) if self._branches is not None else ()) + self.passes

    def extend(self, graph_pass: GraphPass) -> None:
        """Compile with `graph_pass`, which adds inputs given at every call, from the next call on (ControlNet's
        residuals); a pass of the same name is replaced. The same pass again (by its key) compiles nothing."""
        if graph_pass.key in [p.key for p in self._extended]:
            return
        self._extended = (*[p for p in self._extended if p.name != graph_pass.name], graph_pass)
        self._request = self._compiled = self._blob = None
        self._shapes = None

    def adapt(self, branches: GraphPass | None, tensors: dict[str, np.ndarray]) -> None:
        """Compile with the pass `branches`, which adds graph inputs, and feed them `tensors` at every call
        from now on. Another pass (by its key) compiles again at the next call; other tensors do not."""
        if (branches.key if branches else None) != (self._branches.key if self._branches else None):
            self._request = self._compiled = self._blob = None
            self._shapes, self._branches = None, branches
        self._bound, self._bound_set = tensors, False

    def __call__(self, **inputs: Input) -> np.ndarray:
        return self._infer(inputs).get_output_tensor(0).data.copy()

    def outputs(self, **inputs: Input) -> list[np.ndarray]:
        """Every output of the graph, in order."""
        request = self._infer(inputs)
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]

    def _infer(self, given: dict[str, Input]) -> ov.InferRequest:
        shapes = {name: _whole_shape(value) for name, value in given.items()}
        repeated = () if self.interface.dynamic else tuple(n for n, v in given.items() if isinstance(v, Repeated))
        if self._request is None or shapes != self._shapes or repeated != self._repeated:
            self._request = self._compiled = self._blob = None  # in this order: each may use the next
            self._request = self._compile(shapes, repeated)
        inputs = {
            n: (v.rows if self._shares else v.whole()) if isinstance(v, Repeated) else v for n, v in given.items()
        }
        request = self._request
        if not self._bound_set:
            # Set once per request, sharing the arrays' memory: not copied at every call, nor held twice.
            bound = {name: value for name, value in self._bound.items() if name in self._dtypes}
            for name, value in conform(bound, self._dtypes).items():
                request.set_tensor(name, ov.Tensor(np.ascontiguousarray(value), shared_memory=True))
            self._bound_set = True
        request.infer(conform(inputs, self._dtypes))
        return request

    def release_memory(self) -> None:
        """Free the buffers of intermediate results (about 1 GB for an SD 1.5 UNet at 512x512), keeping
        the compiled model; the next call allocates them again."""
        if self._compiled is not None:
            self._compiled.release_memory()

    def release(self) -> None:
        """Free the graph and the compiled model; the next call reads (and compiles or imports) again."""
        self._model = self._request = self._shapes = self._compiled = self._blob = None


def _whole_shape(value: Input) -> tuple[int, ...]:
    if isinstance(value, Repeated):
        return (2 * len(value.rows), *value.rows.shape[1:])
    return tuple(value.shape)


def _feed_as_float(model: ov.Model, name: str) -> None:
    # An integer input whose every consumer converts it to float becomes a float32 input, so the
    # conversions are no-ops and fractional values pass. Any other use of it keeps it as it is.
    matches = [p for p in model.get_parameters() if name in p.output(0).get_names()]
    if not matches or not matches[0].get_element_type().is_integral():
        return
    consumers = [target.get_node() for target in matches[0].output(0).get_target_inputs()]
    if all(node.get_type_name() == "Convert" and node.get_element_type().is_real() for node in consumers):
        matches[0].set_element_type(ov.Type.f32)
        model.validate_nodes_and_infer_types()
