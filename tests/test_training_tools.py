"""The demo's few-step training script end to end with a handful of steps per stage: every stage runs,
the outputs load with diffusers, and a rerun with the same work folder resumes instead of training again.
(What the full run reaches is on the model card; this guards the script, not the numbers.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["tiny-steps", "tiny-distil-steps", "tiny-edge-steps", "tiny-corner-steps", "tiny-grown-steps"]
STAGES += ["tiny-fewstep-steps", "tiny-contour-steps", "student-steps"]


def _train(work: Path, out: Path) -> str:
    command = [sys.executable, str(ROOT / "tools" / "train_fewstep_demo.py"), "--work", str(work)]
    command += ["--trajectories", "16", "--chunk", "16", "--batch", "4", "--threads", "2"]
    command += [arg for stage in STAGES for arg in (f"--{stage}", "2")]
    command += ["--out-fewstep", str(out / "fewstep"), "--out-tiny", str(out / "tiny")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
def test_the_few_step_training_script_runs_every_stage_and_resumes(tmp_path):
    from diffusers import AutoencoderTiny, LCMScheduler, UNet2DConditionModel

    work = tmp_path / "work"
    first = _train(work, tmp_path)
    for stage in ("student", "tiny-distil", "tiny-grown", "tiny-fewstep", "tiny-contour"):
        assert f"{stage} 2 loss" in first, first
    assert np.load(work / "one_step.npy").shape == (16, 4, 16, 16)
    assert np.load(work / "one_step_fresh.npy").shape == (48, 4, 16, 16)  # three more per caption
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "fewstep" / "unet")
    scheduler = json.loads((tmp_path / "fewstep" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == LCMScheduler.__name__ and unet.config.in_channels == 4
    assert AutoencoderTiny.from_pretrained(tmp_path / "tiny").config.latent_channels == 4
    second = _train(work, tmp_path)  # everything is checkpointed: nothing trains again
    assert " loss " not in second and "done" in second, second
