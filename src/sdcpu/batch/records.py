"""What a batch has done, on disk: one PNG per id, `results.jsonl` (a line per image: id, file, sha256,
seed, settings, seconds) and `failures.jsonl` (a line per line that could not run, with its reason).

Resuming trusts nothing but the files: an id is done when results.jsonl has its line and its PNG is there
with that sha256. A PNG is renamed into place whole (save_png) before its line is written, and a line is
flushed to disk before the next image starts, so a batch killed at any moment (Ctrl-C, kill -9, a lost
node) loses at most the image in flight: one whose PNG is in place without its line is made again, and
its bytes are the same. At the start of each run results.jsonl is rewritten with the verified lines only
(a torn last line or a line whose image is gone leaves no duplicate), and failures.jsonl with this run's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from sdcpu.errors import SdcpuError
from sdcpu.format.manifest import sha256_file

RESULTS, FAILURES = "results.jsonl", "failures.jsonl"


def check_out(out: Path) -> None:
    """The output folder: made if missing, and writable (checked by writing), before the model loads."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise SdcpuError(f"cannot write in the output folder {out}: {err.strerror or err}") from None


def remove_partials(out: Path) -> None:
    """Delete the temporary files of PNGs whose writer was killed (save_png's `*.png.partial`)."""
    for partial in out.glob("*.png.partial"):
        partial.unlink(missing_ok=True)


def verified_results(out: Path) -> dict[str, dict[str, Any]]:
    """The result lines of `out` whose PNG is there with its sha256, by id (the last line of an id wins)."""
    path = out / RESULTS
    if not path.is_file():
        return {}
    found: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line torn by a kill
            continue
        if isinstance(record, dict) and isinstance(record.get("id"), str) and isinstance(record.get("file"), str):
            found[record["id"]] = record
    return {key: record for key, record in found.items() if _intact(out, record)}


def _intact(out: Path, record: dict[str, Any]) -> bool:
    image = out / record["file"]
    return (
        Path(record["file"]).name == record["file"] and image.is_file() and sha256_file(image) == record.get("sha256")
    )


def rewrite(path: Path, records: list[dict[str, Any]]) -> None:
    """`path` as these JSON lines, replaced whole (a temporary file renamed into place)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Log:
    """An append-only JSON-lines file, each line on disk (flushed and synced) before `write` returns."""

    def __init__(self, path: Path):
        self.file: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
