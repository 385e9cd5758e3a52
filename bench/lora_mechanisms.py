"""The other way to apply a LoRA without reconverting, measured against the one sdcpu ships.

Fusing: the LoRA's products added into the UNet's weights in the read graph (W' = W + scale · up @ down,
the weights widened to f32 where they were stored in f16), then the graph compiled again. What a switch
costs that way is the fuse and the compile; a step then costs what the base model's does. sdcpu's branches
(runtime/lora/branches.py) switch by feeding new tensors and pay at every step instead: bench/lora_speed.py.

Run after bench/lora_speed.py, on its folders and LoRA files (SD 1.5's architecture, random weights):

    python bench/lora_mechanisms.py --work /tmp/sdcpu-lora --precision fp16 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.bench.machine import machine_line, peak_rss_gb

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"sample": [2, 4, 64, 64], "timestep": [2], "encoder_hidden_states": [2, 77, 768]}


def fuse(model: Any, lora: Path) -> int:
    """Add the LoRA's products into the weights of the layers it adapts; returns how many."""
    import openvino as ov
    import openvino.opset13 as ops

    from sdcpu.runtime.lora.formats import read_lora
    from sdcpu.runtime.lora.layers import LayerNames, describe, graph_layers

    nodes = graph_layers(model)
    names = LayerNames(list(nodes))
    fused = 0
    for name, update in read_lora(lora).updates["unet"].items():
        path = names.resolve(name)
        node = nodes[path][0]
        layer = describe(path, node)
        weight = node.input_value(1).get_node()
        while weight.get_type_name() != "Constant":  # the stored weight, f16 or f32
            weight = weight.input_value(0).get_node()
        w = weight.get_data().astype(np.float32).reshape(layer.shape)
        delta = update.scale * update.up @ update.down.reshape(update.rank, -1)
        patched = (w + delta.reshape(layer.shape)).reshape(node.input(1).get_shape())
        node.input(1).replace_source_output(ops.constant(patched.astype(np.float32), ov.Type.f32).output(0))
        fused += 1
    return fused


def worker(folder: Path, lora: Path) -> dict[str, Any]:
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"}
    start = time.perf_counter()
    model = core.read_model(str(folder / "unet" / "openvino_model.xml"))
    shapes = dict(SHAPES)
    if model.input("timestep").get_partial_shape().rank.get_length() == 0:  # a scalar timestep
        shapes["timestep"] = []
    model.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
    layers = fuse(model, lora)
    fused = time.perf_counter() - start
    compiled = core.compile_model(model, "CPU", config)
    switch = time.perf_counter() - start
    request = compiled.create_infer_request()
    feeds = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    feeds["timestep"] = np.full(shapes["timestep"], 500, np.float32)
    seconds = []
    for _ in range(4):
        begin = time.perf_counter()
        request.infer(feeds)
        seconds.append(time.perf_counter() - begin)
    return {
        "layers": layers,
        "fuse_s": fused,
        "switch_s": switch,
        "unet_step_s": statistics.median(seconds[1:]),
        "peak_rss_gb": peak_rss_gb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-lora"))
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "lora_mechanisms.json")
    args = parser.parse_args()
    folder, lora = args.work / args.precision, args.work / "a.safetensors"
    if args.worker:
        print("RESULT " + json.dumps(worker(folder, lora)), flush=True)
        return
    runs = []
    for _ in range(args.rounds):
        cmd = [sys.executable, __file__, "--worker", "--work", str(args.work), "--precision", args.precision]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.split("RESULT ", 1)[1]))
        print(runs[-1], flush=True)
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    record = {"machine": machine_line(), "precision": args.precision, "median": median, "runs": runs}
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(median, indent=2))


if __name__ == "__main__":
    main()
