"""A rich progress bar for the denoising loop: steps, steps/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress:
    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("denoising"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> StepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, step: int, total: int, latents: object) -> bool:
        if self._task is None:
            self._task = self._progress.add_task("denoising", total=total, rate="")
        self._progress.update(self._task, completed=step)
        elapsed = self._progress.tasks[0].elapsed or 0.0
        rate = f"{step / elapsed:.2f} steps/s" if elapsed > 0 else ""
        self._progress.update(self._task, rate=rate)
        return True
