"""The models shipped in the package, and where they live: the bundled demo models (see demo/README.md,
their model card).

`openvino/` is the converted fp32 model, shipped inside the package so that `sdcpu generate` works
offline with the base (torch-free) install; `source/` holds its diffusers weights, from which the
tests convert it again and compare; `loras/` the LoRAs trained for it. `lcm/` is the few-step model
distilled from it, `xl/` demo-xl, the same world through SDXL's architecture, distilled from it too
(both fp16, converted only). numpy-free, torch-free: paths, and the bundled model a name stands for.
"""

from __future__ import annotations

from pathlib import Path

from sdcpu.errors import SdcpuError

DEMO_ROOT = Path(__file__).parent / "demo"
CONVERTED = DEMO_ROOT / "openvino"
SOURCE = DEMO_ROOT / "source"
FEWSTEP = DEMO_ROOT / "lcm"
XL = DEMO_ROOT / "xl"
# `--model NAME` for the bundled models, where no folder of that name exists
BUNDLED = {"demo": CONVERTED, "demo-lcm": FEWSTEP, "demo-xl": XL}
# The LoRAs trained for a bundled model, found by name (`--lora night`, `<lora:night:1>`) without --lora-dir
BUNDLED_LORAS = {CONVERTED: DEMO_ROOT / "loras"}
# The ControlNets trained for a bundled model, found by name (`--control edges:IMAGE`) without --controlnet-dir
BUNDLED_CONTROLNETS = {CONVERTED: DEMO_ROOT / "controlnets"}


def model_folder(model_dir: str | Path | None) -> Path:
    """MODEL_DIR as a folder; or, where none has that name, the bundled model (default: the demo)."""
    folder = Path(model_dir).expanduser() if model_dir is not None else CONVERTED
    if model_dir is None or (not folder.exists() and str(model_dir) in BUNDLED):
        folder = BUNDLED[str(model_dir or "demo")]
        if not (folder / "sdcpu.json").is_file():
            raise SdcpuError(f"the bundled model is missing from this install ({folder}); pass a model folder")
    return folder
