"""What computing a guided batch's shared rows once saves (runtime/engines/passes/shared_rows.py), on the
real SD 1.5 architecture with random weights.

Two pipelines of the same folder, loaded as `sdcpu generate` loads it (its graph passes and compute
precision). One UNet call of a guided 512x512 batch (two rows, one sample) is fed to the first with the
sample and timestep `Repeated`, as the pipeline feeds it, and to the second whole, as before the rewrite.
The same for a ControlNet of SD 1.5's shape (as bench/controlnet_speed.py converts it), with its control
image repeated too. Calls alternate, in one process, round by round after a priming call each, each
first in every other round (in one order only, whichever ran first was about 0.1 s slower); medians,
and the largest difference between the two outputs.

    python bench/shared_rows.py --folder /tmp/sdcpu-lora/fp16 --controlnet /tmp/sdcpu-cn/controlnet-fp16 \
        --rounds 6 --json docs/shared_rows.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdcpu.bench.machine import machine_line

SIZE = 512


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def compare(shared: Callable[[], Any], whole: Callable[[], Any], rounds: int, name: str) -> dict[str, Any]:
    shared(), whole()  # priming: compiled here
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    difference = 0.0
    for round_ in range(rounds):  # in turn first and second: a call right after the other runs slower
        if round_ % 2:
            b, out_b = timed(whole)
            a, out_a = timed(shared)
        else:
            a, out_a = timed(shared)
            b, out_b = timed(whole)
        times["shared"].append(a)
        times["whole"].append(b)
        outs_a, outs_b = (out_a, out_b) if isinstance(out_a, list) else ([out_a], [out_b])
        difference = max([difference, *(float(np.abs(x - y).max()) for x, y in zip(outs_a, outs_b, strict=True))])
        print(f"{name} round {round_}: shared {a:.3f} s, whole {b:.3f} s", flush=True)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {"seconds": medians, "shared_over_whole": medians["shared"] / medians["whole"], "max_abs_diff": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="an sdcpu folder of SD 1.5's architecture")
    parser.add_argument("--controlnet", type=Path, default=None, help="a converted ControlNet of its shape")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from sdcpu import Pipeline
    from sdcpu.format.controlnet import ControlNetManifest
    from sdcpu.runtime.engines import Repeated, load_model

    first, second = Pipeline.load(args.folder), Pipeline.load(args.folder)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((1, 4, SIZE // 8, SIZE // 8), dtype=np.float32)
    timestep = np.full(1, 500.0, np.float32)
    text = rng.standard_normal((2, 77, 768), dtype=np.float32)
    unet = compare(
        lambda: first.unet(sample=Repeated(latent), timestep=Repeated(timestep), encoder_hidden_states=text),
        lambda: second.unet(
            sample=np.concatenate([latent, latent]), timestep=np.repeat(timestep, 2), encoder_hidden_states=text
        ),
        args.rounds,
        "unet",
    )
    result: dict[str, Any] = {
        "machine": machine_line(),
        "folder": str(args.folder),
        "compute_precision": first.unet.compute_precision,
        "unet": unet,
    }
    if args.controlnet is not None:
        graph = ControlNetManifest.load(args.controlnet).graph_path(args.controlnet)
        nets = [load_model(graph, first.options, lazy=True) for _ in range(2)]
        image = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
        same = {"sample": latent, "timestep": timestep, "controlnet_cond": image}
        result["controlnet"] = compare(
            lambda: nets[0].outputs(**{k: Repeated(v) for k, v in same.items()}, encoder_hidden_states=text),
            lambda: nets[1].outputs(**{k: np.concatenate([v, v]) for k, v in same.items()}, encoder_hidden_states=text),
            args.rounds,
            "controlnet",
        )
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
