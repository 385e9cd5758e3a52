"""Guided UNet steps at 512x512 (batch 2), side by side: diffusers-PyTorch and each sdcpu backend, each
in its own process (so no runtime shares threads or libraries with another), called in turn round after
round so that they share the machine's noise. Prints medians and ratios to PyTorch.

    python bench/unet_steps.py --work /tmp/sdcpu-bench --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUNNERS = ("pytorch", "sdcpu-openvino", "sdcpu-onnxruntime")


def make_runner(name: str, work: Path):
    rng = np.random.default_rng(0)
    inputs = {
        "sample": rng.standard_normal((2, 4, 64, 64), dtype=np.float32),
        "timestep": np.full(2, 500.0, dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 768), dtype=np.float32),
    }
    if name == "pytorch":
        import torch
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(work / "diffusers", subfolder="unet").eval()
        torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

        def pytorch() -> None:
            with torch.inference_mode():
                unet(**torch_inputs)

        return pytorch
    from sdcpu.format.manifest import Manifest
    from sdcpu.runtime.components.unet import unet_interfaces
    from sdcpu.runtime.engines import load_model
    from sdcpu.runtime.options import LoadOptions

    backend = name.removeprefix("sdcpu-")
    folder = work / ("openvino" if backend == "openvino" else "onnx")
    manifest = Manifest.load(folder)
    options = LoadOptions(backend=backend, compute_precision="f32", cache=False, winograd=False).resolve(manifest)
    model = load_model(manifest.graph_path(folder, "unet"), options, interface=unet_interfaces(manifest)["unet"])
    return lambda: model(**inputs)


def worker(name: str, work: Path) -> None:
    run = make_runner(name, work)
    run()  # warm-up: OpenVINO compiles for the static shape here
    print("ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        run()
        print(time.perf_counter() - start, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.work)
    procs: dict[str, subprocess.Popen] = {}
    pipes: dict[str, tuple] = {}
    for name in RUNNERS:  # started one at a time: loading and compiling stay out of each other's way
        cmd = [sys.executable, __file__, "--worker", name, "--work", str(args.work)]
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        pipes[name] = (procs[name].stdin, procs[name].stdout)
        assert pipes[name][1].readline().strip() == "ready"
    times: dict[str, list[float]] = {name: [] for name in RUNNERS}
    for _ in range(args.rounds):
        for name, (stdin, stdout) in pipes.items():
            time.sleep(1)  # let the previous runner's threads go idle
            stdin.write("run\n")
            stdin.flush()
            times[name].append(float(stdout.readline()))
            print(f"{name}: {times[name][-1]:.2f} s", flush=True)
    for name, proc in procs.items():
        pipes[name][0].close()
        proc.wait()
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: medians[name] / medians["pytorch"] for name in medians}
    result = {"rounds": args.rounds, "median_s": medians, "ratio_to_pytorch": ratios, "times_s": times}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
