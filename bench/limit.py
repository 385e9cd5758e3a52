"""This CPU's best matrix-product rate through OpenVINO, at f32, bf16 and int8 (u8 x s8 into s32): the
limit against which a UNet step's FLOP rate is stated (bench/flops.py counts the step's FLOP).

One MatMul of activations [M, K] by a constant weight [K, N], compiled alone for the CPU with every core,
for shapes of SD 1.5's UNet at 512x512 (a guided batch: M = 2 x 4096 tokens) and a square one. int8 is
OpenVINO's own int8 path: the activations pass a FakeQuantize (u8), the weight is stored as int8 with
its scale, and the CPU plugin computes the product in integers (VNNI or AMX-INT8 where the CPU has them).
A multiply-add counts as 2 FLOP. Each shape: warm calls, then the median of `--calls` timed ones; the
limit is the best shape's rate.

    python bench/limit.py --json docs/limit.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from sdcpu.bench.machine import machine_line

SHAPES = {  # (M, K, N)
    "feed-forward in, 64x64 level (320 -> 2560)": (8192, 320, 2560),
    "feed-forward out, 64x64 level (1280 -> 320)": (8192, 1280, 320),
    "feed-forward in, 32x32 level (640 -> 5120)": (2048, 640, 5120),
    "square 4096": (4096, 4096, 4096),
}


def product(m: int, k: int, n: int, int8: bool) -> ov.Model:
    rng = np.random.default_rng(0)
    x = ops.parameter([m, k], np.float32, name="x")
    if not int8:
        weight = ops.constant(rng.standard_normal((n, k)).astype(np.float32))
        return ov.Model([ops.matmul(x, weight, False, True)], [x])
    low, high = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
    quantized = ops.fake_quantize(x, low, high, low, high, 256)
    stored = ops.constant(rng.integers(-127, 128, (n, k), dtype=np.int8))
    weight = ops.multiply(ops.convert(stored, np.float32), ops.constant(np.full((n, 1), 0.01, np.float32)))
    return ov.Model([ops.matmul(quantized, weight, False, True)], [x])


def rate(m: int, k: int, n: int, precision: str, calls: int) -> float:
    """GFLOP/s of one [m, k] x [k, n] product at `precision` ("f32", "bf16" or "int8")."""
    hint = "bf16" if precision == "bf16" else "f32"
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
    compiled = ov.Core().compile_model(product(m, k, n, precision == "int8"), "CPU", config)
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).uniform(-4, 4, (m, k)).astype(np.float32)
    for _ in range(3):
        request.infer({"x": x})
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({"x": x})
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--precisions", default="f32,bf16,int8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    result: dict[str, Any] = {"machine": machine_line(), "openvino": ov.__version__, "shapes": {}}
    limits = {}
    for precision in args.precisions.split(","):
        if precision == "bf16" and "BF16" not in capabilities:
            print("bf16: this CPU has no native bf16; skipped")
            continue
        rates = {name: rate(*shape, precision, args.calls) for name, shape in SHAPES.items()}
        for name, value in rates.items():
            print(f"{precision:5s} {name:45s} {value:8.1f} GFLOP/s", flush=True)
        result["shapes"][precision] = rates
        limits[precision] = max(rates.values())
    result["limit_gflops"] = limits
    print(json.dumps(limits, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
