"""`sdcpu batch` on the demo model: 20 prompts give 20 PNGs whose bytes are `generate`'s, a run killed
(SIGKILL or Ctrl-C) and run again gives the same files and no duplicate line, bad lines are failures with
their reasons while the others run, and a batch that cannot start says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.cli.main import app

pytestmark = pytest.mark.slow
STEPS = "8"  # enough work per image (about 0.1 s) for a kill to land in the middle of the batch


def _prompts(path: Path, count: int = 20) -> Path:
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle", "star", "ring"]
    lines = [{"prompt": f"a {colours[i % 4]} {shapes[i % 5]}"} for i in range(count)]
    if count > 3:
        lines[3] |= {"id": "fourth", "seed": 7, "guidance": 5.0}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _batch(*args: str) -> subprocess.Popen:
    # Ctrl-C as a terminal gives it: a suite started in the background of a shell without job control
    # inherits SIGINT ignored, and Python then leaves it ignored.
    command = [sys.executable, "-m", "sdcpu", "batch", *args, "--steps", STEPS]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _images(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.glob("*.png"))}


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, Path]:
    """A batch of 20 run to its end without interruption: (the prompt list, the output folder)."""
    folder = tmp_path_factory.mktemp("batch")
    prompts, out = _prompts(folder / "prompts.jsonl"), folder / "out"
    run = _batch(str(prompts), "--out", str(out))
    assert run.wait(timeout=300) == 0, run.stderr.read().decode()
    return prompts, out


def test_twenty_prompts_give_twenty_pngs_with_generates_bytes(whole, tmp_path):
    prompts, out = whole
    results = _results(out)
    assert len(results) == 20 and len({r["id"] for r in results}) == 20 and len(_images(out)) == 20
    assert json.loads((out / "failures.jsonl").read_text() or "null") is None  # empty
    for record in (results[0], next(r for r in results if r["id"] == "fourth")):
        s = record["settings"]
        args = ["generate", s["prompt"], "--out", str(tmp_path / "g.png"), "--seed", str(s["seed"]), "--steps", STEPS]
        args += ["--guidance", str(s["guidance"])] if "guidance" in s else []
        assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
        assert (tmp_path / "g.png").read_bytes() == (out / record["file"]).read_bytes()
    # Run again: everything is done, nothing is made.
    again = _batch(str(prompts), "--out", str(out))
    assert again.wait(timeout=300) == 0 and "0 made, 20 done before" in again.stderr.read().decode()


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_batch_run_again_gives_the_same_files_and_no_duplicate_line(whole, tmp_path, stop):
    prompts, out = whole[0], tmp_path / "out"
    run = _batch(str(prompts), "--out", str(out))
    deadline = time.time() + 120
    while not (out / "results.jsonl").is_file() or len(_results(out)) < 8:
        assert time.time() < deadline and run.poll() is None, "the batch ended before it could be stopped"
        time.sleep(0.01)
    os.kill(run.pid, stop)
    run.wait(timeout=60)
    assert 8 <= len(_images(out)) < 20 and not list(out.glob("*.partial"))
    again = _batch(str(prompts), "--out", str(out))
    assert again.wait(timeout=300) == 0, again.stderr.read().decode()
    ids = [r["id"] for r in _results(out)]
    assert len(ids) == len(set(ids)) == 20
    assert _images(out) == _images(whole[1])


def test_bad_lines_are_failures_with_their_reasons_and_the_others_run(tmp_path):
    prompts = _prompts(tmp_path / "prompts.jsonl", 17).read_text()
    bad = ['{"prompt": "a red circle", "steps": "many"}', '{"prompt": "a", "init_image": "nowhere.png"}', '{"prompt": ']
    (tmp_path / "p.jsonl").write_text(prompts + "\n".join(bad) + "\n")
    run = _batch(str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "out"))
    assert run.wait(timeout=300) == 2 and "3 line(s) could not run" in run.stderr.read().decode()
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert [f["line"] for f in failures] == [18, 20, 19] or sorted(f["line"] for f in failures) == [18, 19, 20]
    reasons = " ".join(f["error"] for f in failures)
    assert "steps = 'many'" in reasons and "cannot read the init image" in reasons and "not valid JSON" in reasons
    assert len(_results(tmp_path / "out")) == 17 and len(_images(tmp_path / "out")) == 17


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: str(d / "missing.jsonl"), "does not exist"),
        (lambda d: (d / "empty.jsonl").write_text("\n# nothing\n") and str(d / "empty.jsonl"), "is empty"),
    ],
)
def test_a_batch_that_cannot_start_says_why(tmp_path, setup, message):
    result = CliRunner().invoke(app, ["batch", setup(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    prompts = _prompts(tmp_path / "p.jsonl", 1)
    result = CliRunner().invoke(app, ["batch", str(prompts), "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "cannot write in the output folder" in result.output
