"""The demo's few-step model and tiny decoder on the demo world's oracle (docs/quality.md).

    python bench/fewstep_quality.py [--count 240] [--json docs/fewstep_quality.json]

Held-out captions, seed = caption index (as `sdcpu eval`). Rows: the demo model at 20 DDIM steps with
guidance 7.5 (its defaults) through the full and the tiny decoder; the few-step model ("demo-lcm": LCM
scheduler, guidance off) at 1, 2 and 4 steps through each decoder; and the few-step model with ToDo's
approximate attention (`--token-downsampling 2`) at 1 and 4 steps. All at f32 compute.

    python bench/fewstep_quality.py --int8-hybrid WORK --only-int8-hybrid

`--int8-hybrid WORK` adds rows for both models converted at int8-hybrid (int8 activations on the UNet's
convolutions, calibrated as bench/demo_quality.py does) with the tiny decoder (fp16 weights). It needs
the [export] extra and the torch models of `tools/train_fewstep_demo.py --out-fewstep WORK/fewstep
--out-tiny WORK/tiny`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line as machine
from sdcpu.demo.oracle import evaluate
from sdcpu.runtime.options import LoadOptions
from sdcpu.runtime.pipelines.base import Pipeline

ROWS = [("demo", 20), ("demo-lcm", 1), ("demo-lcm", 2), ("demo-lcm", 4)]
TODO_ROWS = [("demo-lcm", 1), ("demo-lcm", 4)]
INT8_HYBRID_ROWS = [("demo", 20), ("demo-lcm", 1), ("demo-lcm", 4)]


def measure(model: str, steps: int, decoder: str, count: int, todo: int = 0, name: str | None = None) -> dict:
    """One row: `model` (a bundled name or a folder) on the oracle; `name` names the row (default: `model`)."""
    options = LoadOptions(compute_precision="f32", decoder=decoder, token_downsampling=todo or 1)
    pipe = Pipeline.load(model, options)
    started = time.perf_counter()
    report = evaluate(lambda caption, seed: pipe(caption, steps=steps, seed=seed).array[0], count)
    row = {"model": name or model, "steps": steps, "decoder": decoder, "token_downsampling": todo}
    row |= {"count": report.count, "accuracy": report.accuracy()}
    row |= {"scheduler": f"{pipe.scheduler_config.class_name}, guidance {pipe.defaults.guidance}"}
    row["seconds"] = round(time.perf_counter() - started, 1)
    row["machine"] = machine()
    print(json.dumps(row), flush=True)
    return row


def convert_int8_hybrid(work: Path) -> dict[str, str]:
    """The demo and its few-step model at int8-hybrid with the tiny decoder, calibrated as in
    bench/demo_quality.py (128 UNet inputs from 16 training captions); returns row name -> folder."""
    from demo_quality import calibration_prompts

    from sdcpu.export.calibration import CalibrationSettings
    from sdcpu.export.convert import convert
    from sdcpu.models import SOURCE

    calibration = CalibrationSettings(prompts=calibration_prompts(), size=128)
    folders = {}
    for name, source in (("demo", SOURCE), ("demo-lcm", work / "fewstep")):
        out = work / f"{name}-int8-hybrid"
        if not (out / "sdcpu.json").exists():
            convert(str(source), out, "openvino", "int8-hybrid", calibration=calibration, tiny_vae=work / "tiny")
        folders[name] = str(out)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--json", type=Path, default=Path("docs/fewstep_quality.json"))
    parser.add_argument("--int8-hybrid", type=Path, help="also measure int8-hybrid conversions made here")
    parser.add_argument("--only-int8-hybrid", action="store_true", help="keep the other rows from --json")
    args = parser.parse_args()
    if args.only_int8_hybrid:  # the kept rows keep the CPU they were measured on
        rows = [r for r in json.loads(args.json.read_text())["rows"] if "int8-hybrid" not in r["model"]]
    else:
        rows = [measure(model, steps, decoder, args.count) for decoder in ("full", "tiny") for model, steps in ROWS]
        rows += [measure(model, steps, "full", args.count, todo=2) for model, steps in TODO_ROWS]
    if args.int8_hybrid is not None:
        folders = convert_int8_hybrid(args.int8_hybrid)
        for decoder in ("full", "tiny"):
            for model, steps in INT8_HYBRID_ROWS:
                rows.append(measure(folders[model], steps, decoder, args.count, name=f"{model} int8-hybrid"))
    args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
