"""One UNet IR compiled several ways in one process, timed alternating: OpenVINO's defaults (what
openvino.genai and optimum-intel compile), sdcpu's configuration, and with sdcpu's upsampling pass.
It separates what sdcpu's compile adds to a folder another OpenVINO runtime also reads.

    python bench/unet_variants.py /tmp/sd15/openvino-int8-hybrid --rounds 3

A guided 512x512 call (batch 2), random inputs; per variant two warm calls, then `--rounds` rounds of
three calls each, variants alternating; medians.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from sdcpu.bench.machine import machine_line
from sdcpu.runtime.engines.openvino import engine_config
from sdcpu.runtime.engines.passes.registry import upsampling_convolutions
from sdcpu.runtime.options import LoadOptions


def inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "sample": rng.standard_normal((2, 4, 64, 64), dtype=np.float32),
        "timestep": np.array([500, 500], dtype=np.int64),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
    }


def compiled(core: ov.Core, folder: Path, upsampling: bool, config: dict[str, str]) -> tuple[Any, dict]:
    feed = inputs()
    model = core.read_model(str(folder / "unet" / "openvino_model.xml"))
    names = [port.get_any_name() for port in model.inputs]
    model.reshape({name: ov.PartialShape(list(feed[name].shape)) for name in names})
    if upsampling:
        upsampling_convolutions().apply(model)
    model_compiled = core.compile_model(model, "CPU", config)
    types = {port.get_any_name(): port.get_element_type().to_dtype() for port in model_compiled.inputs}
    return model_compiled.create_infer_request(), {name: feed[name].astype(types[name]) for name in types}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="an sdcpu OpenVINO folder")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compute-precision", default="bf16", choices=("f32", "bf16"))
    args = parser.parse_args()
    options = LoadOptions(compute_precision=args.compute_precision, int8_activations=True)
    ours = engine_config(options)
    variants = {
        "OpenVINO's defaults (genai, optimum-intel)": (False, {}),
        f"sdcpu's configuration {ours}": (False, ours),
        "upsampling pass, OpenVINO's defaults": (True, {}),
        "upsampling pass, sdcpu's configuration (sdcpu)": (True, ours),
    }
    core = ov.Core()
    requests = {name: compiled(core, args.folder, *variant) for name, variant in variants.items()}
    for request, feed in requests.values():
        request.infer(feed)
        request.infer(feed)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (request, feed) in requests.items():
            for _ in range(3):
                start = time.perf_counter()
                request.infer(feed)
                times[name].append(time.perf_counter() - start)
    print(machine_line())
    for name, seconds in times.items():
        print(f"{statistics.median(seconds):.3f} s (min {min(seconds):.3f}, {len(seconds)} calls)  {name}")


if __name__ == "__main__":
    main()
