"""Quality metrics and the `sdcpu eval` command."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from sdcpu.cli.main import app
from sdcpu.demo import world as world
from sdcpu.demo.oracle import evaluate, psnr, ssim


def test_ssim_and_psnr():
    a = np.random.default_rng(0).random((64, 64, 3))
    assert ssim(a, a) == 1.0 and psnr(a, a) == float("inf")
    noisy = np.clip(a + np.random.default_rng(1).normal(0, 0.05, a.shape), 0, 1)
    assert 0.5 < ssim(a, noisy) < 1.0 and 20 < psnr(a, noisy) < 30
    assert ssim(a, np.random.default_rng(2).random(a.shape)) < 0.2


def test_evaluate_counts_what_the_oracle_sees():
    _, held_out = world.split_scenes()
    by_caption = {s.caption(i): s for i, s in enumerate(held_out)}

    def perfect(caption, seed):
        return np.asarray(world.render(by_caption[caption]), dtype=np.float32) / 255

    def blank(caption, seed):
        return np.zeros((64, 64, 3), dtype=np.float32)

    assert evaluate(perfect, 20).accuracy()["all"] == 1.0
    report = evaluate(blank, 20, reference=perfect)
    assert report.accuracy()["all"] == 0.0 and report.count == 20 and len(report.ssim) == 20


def test_eval_command_runs_on_a_converted_model(sd1_openvino):
    result = CliRunner().invoke(
        app,
        ["eval", "--model", str(sd1_openvino), "--reference", str(sd1_openvino), "--count", "2", "--steps", "2"]
        + ["--compute-precision", "f32"],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy_all:" in result.output and "ssim_mean: 1.0000" in result.output
    assert "compute_precision: f32" in result.output and "device: CPU (" in result.output


def test_eval_measures_deep_cache_against_the_exact_model(sd1_openvino):
    args = ["eval", "--model", str(sd1_openvino), "--reference", str(sd1_openvino), "--count", "2", "--steps", "4"]
    result = CliRunner().invoke(app, [*args, "--deep-cache", "2", "--compute-precision", "f32"])
    assert result.exit_code == 0, result.output
    ssim = float(result.output.split("ssim_mean:")[1].split()[0])
    assert 0.5 < ssim < 1.0  # the reference runs every UNet step exactly; DeepCache differs, slightly
