"""Where the bundled demo models live (see models/demo/README.md, their model card).

`openvino/` is the converted fp32 model, shipped inside the package so that `sdcpu generate` works
offline with the base (torch-free) install; `source/` holds its diffusers weights, from which the
tests convert it again and compare. `lcm/` is the few-step model distilled from it (fp16, converted
only). numpy-free, torch-free: paths only.
"""

from __future__ import annotations

from pathlib import Path

DEMO_ROOT = Path(__file__).parent / "demo"
CONVERTED = DEMO_ROOT / "openvino"
SOURCE = DEMO_ROOT / "source"
FEWSTEP = DEMO_ROOT / "lcm"
# `--model NAME` for the bundled models, where no folder of that name exists
BUNDLED = {"demo": CONVERTED, "demo-lcm": FEWSTEP}
