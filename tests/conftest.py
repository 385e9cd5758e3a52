"""Session fixtures: tiny random pipelines, written once and converted once per test run; and the
test tiers (markers registered in pyproject.toml):

- `parity`: needs the `[export]` extra (torch, diffusers, nncf): converts tiny pipelines, compares with
  PyTorch and diffusers. Set on every test that uses a converting fixture, and by hand on the others.
- `slow`: over about 10 s alone. Set by hand.
- `unit`: all the rest: torch-free and fast, `pytest -m unit` is the inner loop (CONTRIBUTING.md).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The README's test command runs two workers (pytest-xdist) on two cores: torch's own thread pool in each
# would oversubscribe them. Set before anything imports torch; subprocesses inherit it. Set without workers
# too, so that a run converts the tiny pipelines alike either way: torch's thread count moves their float
# rounding, which the pixel goldens (test_goldens.py) see as a level on a few pixels (AMD Zen 4).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import tiny  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory) -> Path:
    """Compiled models go to a folder of this run, not the user's cache (subprocesses inherit it)."""
    folder = tmp_path_factory.mktemp("compile-cache")
    os.environ["SDCPU_CACHE_DIR"] = str(folder)
    return folder


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder `name`, built by `build(folder)` once per test run and shared by the pytest-xdist workers:
    the first worker to ask builds it, under a lock; the others wait for it, then reuse it. What is built
    is deterministic (seeded tiny pipelines and their conversions), so which worker builds it does not
    matter; tests read these folders and never change them."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, which holds each worker's
    folder, done = root / "shared" / name, root / "shared" / f"{name}.done"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(root / "shared" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part way
            build(folder)
            done.touch()
    return folder


def _tiny(tmp_path_factory, name: str, write: Callable[..., Path], **options: object) -> Path:
    # A tiny random pipeline, written once per run by tests/tiny.py.
    return shared_folder(tmp_path_factory, name, lambda out: write(out, **options))


@pytest.fixture(scope="session")
def live_server():
    """`sdcpu serve` on the demo model, on a free loopback port, for the browser and A1111-client tests."""
    import socket
    import threading
    import time

    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.serve.app import create_app

    app = create_app(Pipeline.load(None, LoadOptions(compute_precision="f32")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "sd1", tiny.write_diffusers_folder)


@pytest.fixture(scope="session")
def tiny_sd2v(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "sd2v", tiny.write_diffusers_folder, seed=1, v_prediction=True)


def _converted(source: Path, fmt: str, tmp_path_factory, tiny_vae: Path | None = None) -> Path:
    from sdcpu.export.convert import convert

    def build(out: Path) -> None:
        convert(str(source), out, fmt, "fp32", tiny_vae=tiny_vae, progress=lambda _: None)

    return shared_folder(tmp_path_factory, f"{source.name}-{fmt}", build)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "taesd", tiny.write_tiny_vae)


@pytest.fixture(scope="session")
def sd1_openvino(tiny_sd1, tiny_vae, tmp_path_factory) -> Path:
    return _converted(tiny_sd1, "openvino", tmp_path_factory, tiny_vae)  # with the tiny decoder (--tiny-vae)


@pytest.fixture(scope="session")
def sd1_onnx(tiny_sd1, tiny_vae, tmp_path_factory) -> Path:
    return _converted(tiny_sd1, "onnx", tmp_path_factory, tiny_vae)


@pytest.fixture(scope="session")
def tiny_controlnets(tmp_path_factory) -> list[Path]:
    """Two tiny random ControlNets for the tiny SD 1.x pipeline (diffusers folders)."""
    pytest.importorskip("diffusers")
    return [_tiny(tmp_path_factory, f"controlnet-{seed}", tiny.write_controlnet, seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def controlnets_openvino(tiny_controlnets, tmp_path_factory) -> list[Path]:
    return [_converted(folder, "openvino", tmp_path_factory) for folder in tiny_controlnets]


@pytest.fixture(scope="session")
def sdxl_controlnet_openvino(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random ControlNet for the tiny SDXL pipeline: its diffusers folder, and converted."""
    pytest.importorskip("diffusers")
    source = _tiny(tmp_path_factory, "sdxl-controlnet", tiny.write_controlnet, sdxl=True)
    return source, _converted(source, "openvino", tmp_path_factory)


@pytest.fixture(scope="session")
def controlnets_onnx(tiny_controlnets, tmp_path_factory) -> list[Path]:
    return [_converted(folder, "onnx", tmp_path_factory) for folder in tiny_controlnets]


@pytest.fixture(scope="session")
def sd2v_openvino(tiny_sd2v, tmp_path_factory) -> Path:
    return _converted(tiny_sd2v, "openvino", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_inpainting(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "inpainting", tiny.write_diffusers_folder, seed=2, task="inpainting")


@pytest.fixture(scope="session")
def inpainting_openvino(tiny_inpainting, tmp_path_factory) -> Path:
    return _converted(tiny_inpainting, "openvino", tmp_path_factory)


@pytest.fixture(scope="session")
def inpainting_onnx(tiny_inpainting, tmp_path_factory) -> Path:
    return _converted(tiny_inpainting, "onnx", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "upscaler", tiny.write_diffusers_folder, seed=3, task="upscaling")


@pytest.fixture(scope="session")
def upscaler_openvino(tiny_upscaler, tmp_path_factory) -> Path:
    return _converted(tiny_upscaler, "openvino", tmp_path_factory)


@pytest.fixture(scope="session")
def upscaler_onnx(tiny_upscaler, tmp_path_factory) -> Path:
    return _converted(tiny_upscaler, "onnx", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "depth", tiny.write_diffusers_folder, seed=4, task="depth-to-image")


@pytest.fixture(scope="session")
def depth_openvino(tiny_depth, tmp_path_factory) -> Path:
    return _converted(tiny_depth, "openvino", tmp_path_factory)


@pytest.fixture(scope="session")
def depth_onnx(tiny_depth, tmp_path_factory) -> Path:
    return _converted(tiny_depth, "onnx", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "sdxl", tiny.write_sdxl_folder)


@pytest.fixture(scope="session")
def sdxl_openvino(tiny_sdxl, tiny_vae, tmp_path_factory) -> Path:
    return _converted(tiny_sdxl, "openvino", tmp_path_factory, tiny_vae)


@pytest.fixture(scope="session")
def sdxl_onnx(tiny_sdxl, tmp_path_factory) -> Path:
    return _converted(tiny_sdxl, "onnx", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_sdxl_inpainting(tmp_path_factory) -> Path:
    pytest.importorskip("diffusers")
    return _tiny(tmp_path_factory, "sdxl-inpainting", tiny.write_sdxl_folder, seed=3, task="inpainting")


@pytest.fixture(scope="session")
def converted(request, sd1_openvino, sd1_onnx) -> Path:
    return {"openvino": sd1_openvino, "onnx": sd1_onnx}[request.param]


# Fixtures that convert with the export extra: a test using any of them is a parity test.
CONVERTING_FIXTURES = {"tiny_sd1", "tiny_sd2v", "tiny_vae", "sd1_openvino", "sd1_onnx", "sd2v_openvino", "converted"}
CONVERTING_FIXTURES |= {"demo_onnx", "quantized", "single_file"}
CONVERTING_FIXTURES |= {"tiny_inpainting", "inpainting_openvino", "inpainting_onnx"}
CONVERTING_FIXTURES |= {"tiny_upscaler", "upscaler_openvino", "upscaler_onnx"}
CONVERTING_FIXTURES |= {"tiny_depth", "depth_openvino", "depth_onnx"}
CONVERTING_FIXTURES |= {"tiny_sdxl", "sdxl_openvino", "sdxl_onnx", "tiny_sdxl_inpainting"}
CONVERTING_FIXTURES |= {"tiny_controlnets", "controlnets_openvino", "controlnets_onnx", "sdxl_controlnet_openvino"}


# The modules that take longest (mostly converting), first: the workers take whole modules (--dist loadfile)
# in collection order, and the run ends sooner when no long module is left for the end.
LONGEST_FIRST = (
    "test_quantize.py",
    "test_sdxl_features.py",
    "test_convert.py",
    "test_bad_inputs.py",
    "test_inpaint.py",
    "test_goldens.py",
    "test_depth.py",
    "test_lora.py",
    "test_lora_runtime.py",
    "test_lora_runtime_sdxl.py",
    "test_sdxl.py",
    "test_demo_model.py",
    "test_parity.py",
    "test_upscale.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    for item in items:
        if CONVERTING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.parity)
        if not any(item.get_closest_marker(name) for name in ("parity", "slow")):
            item.add_marker(pytest.mark.unit)
