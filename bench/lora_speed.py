"""What a run-time LoRA costs, on the real SD 1.5 architecture with random weights.

Builds the pipeline from `../shared/reference-configs/stable-diffusion-v1-4` (SD 1.4 and 1.5 share the
architecture), converts it at each precision (OpenVINO), and writes two random rank-32 LoRAs in kohya's
layout on every attention and feed-forward layer of the UNet (q, k, v, out, and both feed-forward
projections). Each runner is its own process, so that peak RSS is its own, and the runners alternate
round by round:

- `plain`: the folder loaded as it is, no LoRA: UNet step time and peak RSS, the baseline;
- `lora`: loaded with `lora_rank=32` (the attention layers compiled ready for LoRAs), then, after an
  untimed first image, timed in order: an image without a LoRA; the same image with LoRA A, the first
  (reading it included); switching to LoRA B; the step time with B active; whether anything compiled
  after load.

Every image is guided, 512x512, Euler, `--steps` steps, warm (each configuration is primed first, so
the compiled-model cache holds it).

    python bench/lora_speed.py --work /tmp/sdcpu-lora --precisions fp16,int8-hybrid --rounds 3
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
from sdcpu.bench.peers import random_pipeline
from sdcpu.bench.timing import Timed

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
PROMPT = "a photograph of an astronaut riding a horse"
# kohya's LoRA targets for SD 1.x (every Linear and 1x1 convolution of the transformer blocks)
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
RANK = 32


def write_lora(unet_graph: Path, path: Path, seed: int) -> int:
    """A random kohya LoRA of RANK on every attention and feed-forward layer; returns its bytes."""
    import openvino as ov

    from sdcpu.runtime.lora.layers import describe, graph_layers

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer_path, nodes in graph_layers(ov.Core().read_model(str(unet_graph))).items():
        if ".attentions." in layer_path and layer_path.endswith(TARGETS):
            out, inp, *kernel = describe(layer_path, nodes[0]).shape  # proj_in, proj_out: 1x1 convolutions
            stem = "lora_unet_" + layer_path.removeprefix("model.").replace(".", "_")
            down = rng.standard_normal((RANK, inp, *kernel), dtype=np.float32) * 0.01
            tensors[f"{stem}.lora_down.weight"] = down
            tensors[f"{stem}.lora_up.weight"] = rng.standard_normal((out, RANK, *kernel), dtype=np.float32) * 0.01
            tensors[f"{stem}.alpha"] = np.array(RANK, np.float32)
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path.stat().st_size


def prepare(work: Path, precisions: list[str]) -> dict[str, Any]:
    from sdcpu.export.calibration import CalibrationSettings
    from sdcpu.export.convert import convert

    if not (work / "diffusers" / "unet").exists():
        random_pipeline(REFERENCE, work / "diffusers")
    convert_s = {}
    for precision in precisions:
        if not (work / precision / "sdcpu.json").exists():
            start = time.perf_counter()
            # int8-hybrid: calibrated on 8 prompts at 256x256 (the cost measured here does not depend on it)
            calibration = CalibrationSettings(size=8, resolution=256)
            convert(str(work / "diffusers"), work / precision, "openvino", precision, calibration=calibration)
            convert_s[precision] = time.perf_counter() - start
    sizes = {}
    for name, seed in (("a", 1), ("b", 2)):
        sizes[name] = write_lora(
            work / precisions[0] / "unet" / "openvino_model.xml", work / f"{name}.safetensors", seed
        )
    return {"convert_s": convert_s, "lora_bytes": sizes}


def _image(pipe: Any, steps: int, loras: list) -> float:
    start = time.perf_counter()
    pipe(PROMPT, steps=steps, seed=0, scheduler="euler", width=512, height=512, loras=loras)
    return time.perf_counter() - start


def _compiled(model: Any) -> Any:
    # the OpenVINO compiled model inside the bench's and the pipeline's wrappers (Timed, RetryAtF32)
    while not hasattr(model, "_compiled"):
        model = model.model
    return model._compiled


def worker(folder: Path, work: Path, mode: str, steps: int) -> dict[str, Any]:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines import Pipeline

    pipe: Any = Pipeline.load(folder, LoadOptions(lora_rank=RANK if mode == "lora" else 0))
    pipe.unet = timed = Timed(pipe.unet)
    _image(pipe, 2, [])  # the first call imports (or compiles) the graphs: not what is measured
    timed.seconds.clear()
    result: dict[str, Any] = {"image_s": _image(pipe, steps, [])}
    result["unet_step_s"] = statistics.median(timed.seconds[1:])
    if mode == "lora":
        compiled = _compiled(pipe.unet)
        timed.seconds.clear()
        result["first_lora_image_s"] = _image(pipe, steps, [(work / "a.safetensors", 1.0)])
        start = time.perf_counter()
        pipe.adapters.apply(pipe.settings(PROMPT, loras=[(work / "b.safetensors", 1.0)]).loras, pipe.networks())
        result["switch_s"] = time.perf_counter() - start
        timed.seconds.clear()
        result["switched_image_s"] = _image(pipe, steps, [(work / "b.safetensors", 1.0)])
        result["unet_step_lora_s"] = statistics.median(timed.seconds[1:])
        result["compiled_again"] = _compiled(pipe.unet) is not compiled
        result["first_lora_extra_s"] = result["first_lora_image_s"] - result["image_s"]
    result["peak_rss_gb"] = peak_rss_gb()
    result["compute_precision"] = pipe.runtime_info()["compute_precision"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-lora"))
    parser.add_argument("--precisions", default="fp16,int8-hybrid")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("PRECISION", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "lora_speed.json")
    args = parser.parse_args()
    if args.worker:
        precision, mode = args.worker
        result = worker(args.work / precision, args.work, mode, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return
    precisions = args.precisions.split(",")
    args.work.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.work, precisions)
    runners = [(p, mode) for p in precisions for mode in ("plain", "lora")]
    runs: dict[str, list[dict]] = {f"{p} {m}": [] for p, m in runners}
    for round_ in range(args.rounds + 1):  # round 0 primes the compiled-model cache and is not kept
        for precision, mode in runners:
            cmd = [sys.executable, __file__, "--worker", precision, mode, "--work", str(args.work)]
            out = subprocess.run([*cmd, "--steps", str(args.steps)], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.split("RESULT ", 1)[1])
            print(f"round {round_} {precision} {mode}: {result}", flush=True)
            if round_:
                runs[f"{precision} {mode}"].append(result)
    median = {
        name: {k: statistics.median(r[k] for r in results) for k in results[0] if isinstance(results[0][k], float)}
        for name, results in runs.items()
    }
    record = {"machine": machine_line(), "steps": args.steps, "rank": RANK, **prepared, "median": median, "runs": runs}
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(median, indent=2))


if __name__ == "__main__":
    main()
