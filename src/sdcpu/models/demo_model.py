"""Where the bundled demo model lives (see models/demo/README.md, its model card).

`openvino/` is the converted fp32 model, shipped inside the package so that `sdcpu generate` works
offline with the base (torch-free) install; `source/` holds its diffusers weights, from which the
tests convert it again and compare. numpy-free, torch-free: paths only.
"""

from __future__ import annotations

from pathlib import Path

DEMO_ROOT = Path(__file__).parent / "demo"
CONVERTED = DEMO_ROOT / "openvino"
SOURCE = DEMO_ROOT / "source"
