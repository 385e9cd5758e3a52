"""The LoRAs of one generation, applied to a loaded pipeline's networks without reconverting.

`Adapters` keeps, per network, the graph's adaptable layers and its branch plan (branches.py),
and gives each network the branch tensors of the LoRAs asked for: the first LoRA compiles the networks
it adapts once with their branches; any LoRA, mix or scale after it that the plan covers only feeds new
tensors. A network's plan only grows (see BranchPlan.grown).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from sdcpu.errors import SdcpuError
from sdcpu.format.families import NAMES
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import Manifest
from sdcpu.runtime.engines import Model
from sdcpu.runtime.lora.branches import BranchPlan, fit
from sdcpu.runtime.lora.formats import LoraFile, Update, read_lora
from sdcpu.runtime.lora.layers import Layer, LayerNames, describe, graph_layers
from sdcpu.runtime.lora.setting import LoraSetting

# The networks a LoRA adapts -> the pipeline components that run each (DeepCache's shallow pass is the
# UNet's first blocks, so it gets the UNet's LoRAs too).
COMPONENTS = {"unet": ("unet", "unet_shallow"), "text_encoder": ("text_encoder",)}
COMPONENTS["text_encoder_2"] = ("text_encoder_2",)
# The layers LoRAs adapt most (kohya's and PEFT's defaults): the UNet's transformer blocks (attention,
# feed-forward, proj_in and proj_out) and the text encoders' layers; compiled ready for LoRAs by `prepare`.
COMMON = {"unet": ".attentions.", "unet_shallow": ".attentions.", "text_encoder": ".layers."}
COMMON["text_encoder_2"] = ".layers."


class Adapters:
    """Run-time LoRAs for the networks of one pipeline, given by component at each call (no reference to
    the pipeline is kept: a cycle would leave its compiled models to the garbage collector), `manifest`
    and `folder` their graphs."""

    def __init__(self, folder: Path, manifest: Manifest, bf16: bool = False):
        self.folder, self.manifest = folder, manifest
        self.bf16 = bf16  # the branches compute in bf16 (the load options' compute precision is bf16)
        self._names: dict[str, tuple[LayerNames, dict[str, Layer]]] = {}  # component -> names, {path: Layer}
        self._plans: dict[str, BranchPlan] = {}
        self.active: tuple[LoraSetting, ...] = ()

    def apply(self, loras: Sequence[LoraSetting], networks: Mapping[str, Model | None]) -> set[str]:
        """Give every network the branches of `loras` (none: zeros where a network has branches);
        returns the components whose LoRAs changed (a text encoder's: its prompts encode differently)."""
        loras = tuple(lora for lora in loras if lora.scale != 0.0)
        if loras == self.active:
            return set()
        # Read for this change only: once fed, the networks hold their own copies, and a file's tensors (a
        # LoRA's size in memory) are let go; the next change reads it again, from the page cache.
        files = [(read_lora(Path(lora.path), partial(self._check_networks, lora)), lora) for lora in loras]
        fed = {}  # every network's updates, all checked before any network changes
        for network, components in COMPONENTS.items():
            for component in components:
                model = networks.get(component)
                if model is not None and component in self.manifest.components:
                    updates = self._updates(component, network, files)
                    if updates or component in self._plans:
                        fed[component] = (model, updates)
        for component, (model, updates) in fed.items():
            self._feed(component, model, updates)
        self.active = loras
        return set(fed)

    def prepare(self, rank: int, networks: Mapping[str, Model | None]) -> None:
        """Compile every network ready for LoRAs up to `rank` on its COMMON layers, fed zeros until a LoRA
        is given: the first LoRA on those layers then compiles nothing."""
        for component, marker in COMMON.items():
            model = networks.get(component)
            if model is None or component not in self.manifest.components:
                continue
            _, layers = self._layers(component)
            common = frozenset(layer for path, layer in layers.items() if marker in path)
            self._feed(component, model, {}, common, rank)

    def _check_networks(self, lora: LoraSetting, networks: set[str]) -> None:
        family = self.manifest.family
        present = {network for network, components in COMPONENTS.items() if components[0] in self.manifest.components}
        lacking = networks - present
        if lacking:
            made_for = "Stable Diffusion XL" if "text_encoder_2" in lacking else "another family"
            raise SdcpuError(
                f"LoRA {lora.name} is a LoRA for {made_for} (it adapts {', '.join(sorted(lacking))}); this "
                f"model is {NAMES.get(family, family)}: use a LoRA made for it"
            )

    def _updates(
        self, component: str, network: str, files: list[tuple[LoraFile, LoraSetting]]
    ) -> dict[str, list[Update]]:
        # {graph path: the fitted updates, each times its LoRA's scale} of one component.
        names, layers = self._layers(component)
        found: dict[str, list[Update]] = {}
        for file, lora in files:
            missing = []
            for name, update in file.updates[network].items():
                path = names.resolve(name)
                if path is None:
                    missing.append(name)
                    continue
                found.setdefault(path, []).append(fit(update, layers[path], f"LoRA {lora.name}", lora.scale))
            if missing and component == COMPONENTS[network][0]:  # the shallow pass lacks most layers: no warning
                if len(missing) == len(file.updates[network]):
                    raise SdcpuError(
                        f"LoRA {lora.name} adapts no layer of this model's {network}; is it for another family?"
                    )
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                note = f"LoRA {lora.name}: {len(missing)} {network} layers not found, left as they are: {shown}"
                warnings.warn(note, stacklevel=4)
        return found

    def _layers(self, component: str) -> tuple[LayerNames, dict[str, Layer]]:
        if component not in self._names:
            import openvino as ov

            model = ov.Core().read_model(str(self.manifest.graph_path(self.folder, component)))
            layers = {path: describe(path, nodes[0]) for path, nodes in graph_layers(model).items()}
            config_file = self.folder / component / "config.json"
            config = read_json_object(config_file) if config_file.is_file() else None
            self._names[component] = (LayerNames(list(layers), config), layers)
        return self._names[component]

    def _feed(
        self,
        component: str,
        model: Model,
        updates: dict[str, list[Update]],
        more: frozenset[Layer] = frozenset(),
        rank: int = 0,
    ) -> None:
        # The network's plan grown to the updates' layers and ranks (and `more` layers, up to `rank`), and
        # the updates fed to it: zeros on the plan's other layers.
        _, layers = self._layers(component)
        rank = max([rank, *(sum(u.rank for u in found) for found in updates.values())])
        plan = self._plans.get(component, BranchPlan((), 0)).grown(more | {layers[path] for path in updates}, rank)
        self._plans[component] = plan
        model.adapt(plan.graph_pass(component, self.bf16), plan.tensors(updates))
