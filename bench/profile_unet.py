"""OpenVINO's per-node profile of a UNet as a pipeline runs it: sdcpu's, or optimum-intel's, side by side.

One guided 512x512 generation of a few Euler steps with PERF_COUNT on, then the UNet's last call's nodes
summed by kind of work (node type and the kernel OpenVINO picked, whose name holds its precision):

    python bench/profile_unet.py sdcpu /tmp/sd15/openvino-int8-hybrid --int8-activations
    PYTHONPATH=src /tmp/ov/bin/python bench/profile_unet.py optimum /tmp/sd15/optimum-int8-hybrid

Prints the total and the 25 largest kinds (with --nodes N, the N slowest nodes too), and with --json writes
every kind (milliseconds). sdcpu's UNet computes at --compute-precision (f32 unless bf16 is asked);
optimum-intel's at OpenVINO's default.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

PROMPT, STEPS, SIZE = "a photograph of an astronaut riding a horse", 3, 512


def sdcpu_request(folder: Path, int8_activations: bool, compute: str) -> Any:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines import Pipeline

    options = LoadOptions(compute_precision=compute, int8_activations=int8_activations, cache=False)
    pipe: Any = Pipeline.load(folder, options)
    pipe.unet.config["PERF_COUNT"] = "YES"  # read at the UNet's first compile
    pipe(PROMPT, steps=STEPS, seed=0, scheduler="euler", width=SIZE, height=SIZE)
    return pipe.unet._request


def optimum_request(folder: Path) -> Any:
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(folder, compile=False, ov_config={"PERF_COUNT": "YES"})
    pipe.reshape(batch_size=1, height=SIZE, width=SIZE, num_images_per_prompt=1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE)
    return pipe.unet.request._infer_request  # the compiled model's own request, which its __call__ runs


def by_kind(request: Any) -> Counter:
    """Milliseconds of the last call by (node type, kernel): e.g. Convolution / brgconv_avx512_I8."""
    kinds: Counter = Counter()
    for node in request.get_profiling_info():
        if node.status.name == "EXECUTED":
            kinds[f"{node.node_type} / {node.exec_type}"] += node.real_time.total_seconds() * 1e3
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tool", choices=("sdcpu", "optimum"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--int8-activations", action="store_true", help="sdcpu: --int8-activations")
    parser.add_argument("--compute-precision", default="f32", choices=("f32", "bf16"), help="sdcpu's compute")
    parser.add_argument("--nodes", type=int, default=0, help="also print the N slowest nodes by name")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.tool == "sdcpu":
        request = sdcpu_request(args.folder, args.int8_activations, args.compute_precision)
    else:
        request = optimum_request(args.folder)
    kinds = by_kind(request)
    print(f"total {sum(kinds.values()):.0f} ms")
    for kind, ms in kinds.most_common(25):
        print(f"{ms:9.1f} ms  {kind}")
    nodes = [n for n in request.get_profiling_info() if n.status.name == "EXECUTED"]
    for node in sorted(nodes, key=lambda n: n.real_time, reverse=True)[: args.nodes]:
        kind = f"{node.node_type} / {node.exec_type}"
        print(f"{node.real_time.total_seconds() * 1e3:9.1f} ms  {node.node_name}  ({kind})")
    if args.json:
        args.json.write_text(json.dumps(dict(kinds.most_common()), indent=2) + "\n")


if __name__ == "__main__":
    main()
