"""Converting SDXL base's architecture (random weights) at each precision: wall time, peak RSS, folder size.

    python bench/sdxl_convert.py --work /tmp/sdxl [--precisions fp32 fp16 int8 int4 int8-hybrid]

The random pipeline is built from ../shared's SDXL base configs (as bench/sdxl_speed.py does). Each
convert is its own process, run one at a time; its peak RSS is the ru_maxrss the kernel reports for it
(wait4). int8-hybrid calibrates at 512x512 (`--calibration-resolution 512`, 32 inputs): docs/convert.md
says why. Results: docs/sdxl_convert.json, summarised in docs/benchmarks.md. Each converted folder is
removed after it is measured, unless --keep (then it stays as WORK/convert-PRECISION).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.peers import random_pipeline

ROOT = Path(__file__).resolve().parents[1]
SDXL = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-xl-base-1.0"
OPTIONS = {"int8-hybrid": ("--calibration-resolution", "512")}


def measure(source: Path, out: Path, precision: str) -> dict:
    command = [str(Path(sys.executable).parent / "sdcpu"), "convert", str(source), str(out), "--force"]
    command += ["--precision", precision, *OPTIONS.get(precision, ())]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = [line.rstrip() for line in process.stdout if "exported" in line or "recording" in line]
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"convert at {precision} failed:\n" + "\n".join(lines))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "options": list(OPTIONS.get(precision, ())),
        "seconds": time.perf_counter() - start,
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # KiB on Linux
        "folder_gb": size / 1e9,
        "progress": lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdxl"))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8", "int4", "int8-hybrid"])
    parser.add_argument("--keep", action="store_true", help="keep the converted folders")
    args = parser.parse_args()
    source = args.work / "sdxl-diffusers"
    if not (source / "model_index.json").exists():
        random_pipeline(SDXL, source)
    scheduler = SDXL / "scheduler" / "scheduler_config.json"
    shutil.copy(scheduler, source / "scheduler" / "scheduler_config.json")  # SDXL base's own
    record_path = ROOT / "docs" / "sdxl_convert.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"rows": {}}
    for precision in args.precisions:
        out = args.work / f"convert-{precision}"
        record["rows"][precision] = measure(source, out, precision)
        print(precision, {k: v for k, v in record["rows"][precision].items() if k != "progress"}, flush=True)
        if not args.keep:
            shutil.rmtree(out)
        record["machine"] = machine()
        record_path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
