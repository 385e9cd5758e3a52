"""Scheduler loops with a dummy model, against diffusers' schedulers on the same configs and noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny

from sdcpu.runtime.schedulers import SCHEDULERS, SchedulerConfig, make_scheduler

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.parity

REFERENCE = tiny.REFERENCE
SD1 = tiny.SD1_SCHEDULER
SD2_V = {**SD1, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
LINEAR_TRAILING = {
    **SD1,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "timestep_spacing": "trailing",
}

DIFFUSERS_CLASSES = tiny.DIFFUSERS_SCHEDULERS


def dummy_model(x: np.ndarray, t: float) -> np.ndarray:
    """A smooth stand-in for the UNet whose output depends on both the sample and the timestep."""
    return (np.tanh(0.7 * x + 0.3) * (0.5 + float(t) / 1000.0) + 0.1 * np.cos(3 * x)).astype(np.float32)


def run_ours(name: str, config: dict, steps: int, x: np.ndarray, seed: int) -> np.ndarray:
    scheduler = make_scheduler(name, SchedulerConfig.from_dict(config))
    scheduler.set_timesteps(steps)
    rng = np.random.default_rng(seed)
    x = x * np.float32(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        eps = dummy_model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x, rng)
    return x


def run_diffusers(name: str, config: dict, steps: int, x: np.ndarray, seed: int, monkeypatch) -> np.ndarray:
    class_name, extra = DIFFUSERS_CLASSES[name]
    scheduler = getattr(diffusers, class_name).from_config({**config, **extra})
    scheduler.set_timesteps(steps)
    rng = np.random.default_rng(seed)

    def numpy_noise(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))

    module = __import__(type(scheduler).__module__, fromlist=["randn_tensor"])
    monkeypatch.setattr(module, "randn_tensor", numpy_noise, raising=False)
    sample = torch.from_numpy(x) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        eps = torch.from_numpy(dummy_model(model_in.numpy(), float(t)))
        sample = scheduler.step(eps, t, sample).prev_sample
    return sample.numpy()


@pytest.mark.parametrize("config_name", ["sd1", "sd2_v", "linear_trailing"])
@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps", [4, 20])
def test_matches_diffusers(name, config_name, steps, monkeypatch):
    config = {"sd1": SD1, "sd2_v": SD2_V, "linear_trailing": LINEAR_TRAILING}[config_name]
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = run_ours(name, config, steps, x, seed=1)
    theirs = run_diffusers(name, config, steps, x, seed=1, monkeypatch=monkeypatch)
    scale = max(1.0, float(np.abs(theirs).max()))
    np.testing.assert_allclose(ours, theirs, atol=2e-4 * scale, rtol=0)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_timesteps_match_diffusers(name):
    class_name, extra = DIFFUSERS_CLASSES[name]
    reference = getattr(diffusers, class_name).from_config({**SD1, **extra})
    reference.set_timesteps(25)
    ours = make_scheduler(name, SchedulerConfig.from_dict(SD1))
    ours.set_timesteps(25)
    np.testing.assert_allclose(ours.timesteps, reference.timesteps.numpy(), atol=1e-4)
    assert ours.init_noise_sigma == pytest.approx(float(reference.init_noise_sigma), rel=1e-5)


def test_swapped_schedulers_are_told_apart(monkeypatch):
    """The parity check has teeth: two different schedulers differ far beyond its tolerance."""
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)
    ours = run_ours("euler", SD1, 20, x, seed=1)
    theirs = run_diffusers("dpm++2m", SD1, 20, x, seed=1, monkeypatch=monkeypatch)
    assert np.abs(ours - theirs).max() > 1e-2


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference configs not present")
@pytest.mark.parametrize("model", ["stable-diffusion-v1-4", "stable-diffusion-2-1", "stable-diffusion-xl-base-1.0"])
def test_real_scheduler_configs_load(model):
    raw = json.loads((REFERENCE / model / "scheduler" / "scheduler_config.json").read_text())
    config = SchedulerConfig.from_dict(raw)
    assert config.class_name == raw["_class_name"]
    assert config.prediction_type == raw.get("prediction_type", "epsilon")


@pytest.mark.parametrize(
    "overrides, steps, guidance",
    [
        ({}, 20, 7.5),
        ({"_class_name": "LCMScheduler"}, 4, 1.0),
        ({"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}, 1, 0.0),
        ({"_class_name": "EulerAncestralDiscreteScheduler"}, 20, 7.5),
    ],
)
def test_few_step_models_default_to_few_unguided_steps(overrides, steps, guidance):
    from sdcpu.runtime.schedulers import SchedulerConfig, sampling_defaults

    config = SchedulerConfig.from_dict({"_class_name": "DDIMScheduler", **overrides})
    assert (sampling_defaults(config).steps, sampling_defaults(config).guidance) == (steps, guidance)
