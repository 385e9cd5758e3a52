"""The battery of bad inputs (sdcpu/bench/bad_inputs.py), each in its own process: exit code 2 (never a signal),
its message on stderr, no traceback, and no output file; an existing output is left as it was."""

from __future__ import annotations

import importlib.util

import pytest

from sdcpu.bench.bad_inputs import CASES, Case, run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_a_clear_error(case: Case, tmp_path):
    missing = [m for m in case.needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the export extra)")
    result = run(case, tmp_path)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, f"exit {result.returncode}: {stderr[-3000:]}"
    assert "Traceback" not in stderr and "\x1b[" not in stderr, stderr[-3000:]
    assert case.message in " ".join(stderr.split()), stderr[-3000:]
    kept = (tmp_path / "out.png").read_bytes() if (tmp_path / "out.png").exists() else None
    assert kept in (None, b"keep me") and not (tmp_path / "out").exists()  # nothing written, nothing lost
