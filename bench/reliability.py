"""Run the battery of bad inputs (sdcpu/bench/bad_inputs.py) and write its table into docs/reliability.md,
between the `<!-- battery -->` markers: each input, the exit code, and the first line of the message.

    python bench/reliability.py
"""

from __future__ import annotations

import importlib.util
import platform
import re
import tempfile
from pathlib import Path

from sdcpu.bench.bad_inputs import CASES, run

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- battery -->", "<!-- /battery -->"
RUN = re.compile(r"(.)\1{39,}")  # one character 40 times or more


def rows() -> list[str]:
    lines = ["| # | category | input | exit | message |", "|---:|---|---|---:|---|"]
    for i, case in enumerate(CASES, 1):
        if any(importlib.util.find_spec(m) is None for m in case.needs):
            lines.append(f"| {i} | {case.category} | {case.name} | | (skipped: needs {', '.join(case.needs)}) |")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            result = run(case, Path(scratch))
        stderr = result.stderr.decode("utf-8", "replace").strip()
        first = next((line for line in stderr.splitlines() if "error" in line.lower()), stderr[-200:])
        first = first.replace(scratch, "…").replace(f"{ROOT}/", "").replace("|", "\\|")
        first = RUN.sub(lambda run: f"{run[1] * 3}…({len(run[0])} times)", first)  # a 300-byte name, shortened
        traceback = " **traceback**" if "Traceback" in stderr else ""
        lines.append(f"| {i} | {case.category} | {case.name} | {result.returncode}{traceback} | {first} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    table = rows()
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    machine = f"Run with Python {platform.python_version()} on {platform.machine()}, {len(CASES)} cases."
    DOC.write_text(f"{head}{START}\n{machine}\n\n" + "\n".join(table) + f"\n{END}{tail}")


if __name__ == "__main__":
    main()
