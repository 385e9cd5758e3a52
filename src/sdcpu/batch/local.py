"""A batch in this process: the model loaded once, the items not yet done made one after another, each
PNG and its result line on disk before the next starts (records.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.batch.prompts import BadLine, BatchItem
from sdcpu.batch.records import FAILURES, RESULTS, Log, remove_partials, rewrite, verified_results
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
    remove_partials(out)
    done = verified_results(out)
    rewrite(out / RESULTS, list(done.values()))
    failed = [{"id": line.id, "line": line.line, "error": line.reason} for line in bad]
    rewrite(out / FAILURES, failed)
    todo = [item for item in items if item.id not in done]
    return todo, BatchReport(done_before=len(items) - len(todo), failed=failed)


class Recorder:
    """Each record on disk as it comes, before the next image starts: results.jsonl or failures.jsonl,
    and the report. An id is recorded once, however often a record of it comes (a retried Ray task)."""

    def __init__(self, out: Path, report: BatchReport):
        self.report, self.seen = report, set[str]()
        self.results, self.failures = Log(out / RESULTS), Log(out / FAILURES)

    def add(self, record: dict[str, Any]) -> None:
        if record["id"] in self.seen:
            return
        self.seen.add(record["id"])
        if "error" in record:
            self.failures.write(record)
            self.report.failed.append(record)
        else:
            self.results.write(record)
            self.report.made += 1
            self.report.seconds += record["seconds"]

    def close(self) -> None:
        self.results.close()
        self.failures.close()


def run_local(pipe: Any, out: Path, todo: list[BatchItem], report: BatchReport, progress: Progress) -> BatchReport:
    """Make every item of `todo` with `pipe` into `out`. Returns the report; an interruption (Ctrl-C)
    propagates after the last finished image's line is on disk."""
    recorder = Recorder(out, report)
    try:
        for i, item in enumerate(todo, 1):
            record = make_image(pipe, item, out)
            recorder.add(record)
            progress(i, len(todo), record.get("seconds", 0.0))
    finally:
        recorder.close()
    return report
