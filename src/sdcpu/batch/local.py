"""A batch in this process: the model loaded once, the items not yet done made one after another, each
PNG and its result line on disk before the next starts (records.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.batch.prompts import BadLine, BatchItem
from sdcpu.batch.records import FAILURES, RESULTS, Log, rewrite, verified_results
from sdcpu.batch.worker import make_image

Progress = Callable[[int, int, float], None]  # (images done, images to do, seconds of the last one)


@dataclass
class BatchReport:
    done_before: int = 0  # verified in the output folder when the run started
    made: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # the sum of the images' generation times


def plan(out: Path, items: list[BatchItem], bad: list[BadLine]) -> tuple[list[BatchItem], BatchReport]:
    """What is left to do in `out`, with results.jsonl rewritten to its verified lines and failures.jsonl
    to this run's bad lines (the failures of the run are appended as they come)."""
    done = verified_results(out)
    rewrite(out / RESULTS, list(done.values()))
    failed = [{"id": line.id, "line": line.line, "error": line.reason} for line in bad]
    rewrite(out / FAILURES, failed)
    todo = [item for item in items if item.id not in done]
    return todo, BatchReport(done_before=len(items) - len(todo), failed=failed)


def run_local(pipe: Any, out: Path, todo: list[BatchItem], report: BatchReport, progress: Progress) -> BatchReport:
    """Make every item of `todo` with `pipe` into `out`. Returns the report; an interruption (Ctrl-C)
    propagates after the last finished image's line is on disk."""
    results, failures = Log(out / RESULTS), Log(out / FAILURES)
    try:
        for i, item in enumerate(todo, 1):
            record = make_image(pipe, item, out)
            if "error" in record:
                failures.write(record)
                report.failed.append(record)
            else:
                results.write(record)
                report.made += 1
                report.seconds += record["seconds"]
            progress(i, len(todo), record.get("seconds", 0.0))
    finally:
        results.close()
        failures.close()
    return report
