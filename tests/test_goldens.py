"""Pixel goldens: 8-bit images of every scheduler on the demo model and the tiny pipelines, and of
img2img, --low-memory, DeepCache, token downsampling and ONNX Runtime, all at f32 compute.

On a CPU of the instruction-set family they were recorded on (see `isa` in the file) they must be
bit-identical: any refactoring that changes a pixel fails here. On another family OpenVINO picks other
kernels, whose float rounding differs, so they must agree within 3 of 255 levels.

Record again (only when a change of pixels is intended, and say why in the commit), with and without
../shared/reference-configs:
    SDCPU_RECORD_GOLDENS=1 python -m pytest tests/test_goldens.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tiny

from sdcpu.runtime.precision import cpu_info
from sdcpu.runtime.schedulers import SCHEDULERS

# The tiny pipelines use CLIP's real vocabulary from ../shared/reference-configs when it is there, and a
# small built-in one when it is not: one set of goldens for each, both recorded before the src move.
GOLDENS = (
    Path(__file__).parent / "data" / ("goldens.npz" if tiny.SD1_TOKENIZER.exists() else "goldens-no-reference.npz")
)
RECORD = os.environ.get("SDCPU_RECORD_GOLDENS") == "1"
# 8-bit levels: the pipelines' tolerance against diffusers (2/255 on float pixels) plus one for the rounding to 8 bits
OTHER_CPU_TOLERANCE = 3
STEPS = 6
CAPTION = "a small red circle on the left, blue background"
pytestmark = pytest.mark.slow


def isa_family() -> str:
    """The kernels OpenVINO's CPU plugin picks for f32 depend on these. CPUs with AMX are a family of their
    own, and so are AVX-512 CPUs with and without AVX512_BF16: the goldens were recorded on an AMD Zen 5
    (AVX-512 with BF16, no AMX), and with the code they were recorded with they come out up to a level
    apart on an Intel Xeon with AMX and on one whose AVX-512 has VNNI but no BF16 (family 6, model 207)."""
    isa = cpu_info().isa
    if "AVX-512" in isa:
        if "AMX-BF16" in isa:
            return "avx512-amx"
        return "avx512-bf16" if "AVX512_BF16" in isa else "avx512"
    return "avx2" if "AVX2" in isa else "sse"


def _run(
    folder: Path | None, backend: str | None = None, low_memory: bool = False, token_downsampling: int = 1, **call
) -> np.ndarray:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    options = LoadOptions(
        backend=backend, compute_precision="f32", low_memory=low_memory, token_downsampling=token_downsampling
    )
    result = Pipeline.load(folder, options)(call.pop("prompt", CAPTION), seed=call.pop("seed", 0), steps=STEPS, **call)
    return np.asarray(result.images[0])


def _cases(folders: dict[str, Path | None]) -> dict[str, dict]:
    cases = {f"{name}/{s}": {"folder": folders[name], "scheduler": s} for name in folders for s in SCHEDULERS}
    demo, init = folders["demo"], Path(__file__).parent / "data" / "init.png"
    cases["demo/img2img"] = {"folder": demo, "scheduler": "euler", "init_image": init, "strength": 0.6}
    cases["demo/low-memory"] = {"folder": demo, "low_memory": True, "num_images": 2}
    cases["demo/deep-cache"] = {"folder": demo, "deep_cache": 2}
    cases["demo/token-downsampling"] = {"folder": demo, "token_downsampling": 2}
    cases["demo/no-guidance"] = {"folder": demo, "guidance": 1.0, "seed": 7}
    return cases


@pytest.fixture(scope="module")
def images(sd1_openvino, sd2v_openvino, sd1_onnx) -> dict[str, np.ndarray]:
    cases = _cases({"demo": None, "sd1": sd1_openvino, "sd2v": sd2v_openvino})
    cases["sd1-onnx/ddim"] = {"folder": sd1_onnx, "backend": "onnxruntime", "scheduler": "ddim"}
    out = {}
    for name, case in cases.items():
        case = dict(case)
        out[name] = _run(case.pop("folder"), **case)
    if RECORD:
        np.savez_compressed(GOLDENS, isa=np.array(isa_family()), **out)
    return out


def test_images_match_the_goldens(images):
    recorded = np.load(GOLDENS)
    names = sorted(k for k in recorded.files if k != "isa")
    assert names == sorted(images), "the cases changed: record the goldens again"
    exact = str(recorded["isa"]) == isa_family()
    diffs = {name: int(np.abs(images[name].astype(np.int16) - recorded[name].astype(np.int16)).max()) for name in names}
    over = {name: diff for name, diff in diffs.items() if diff > (0 if exact else OTHER_CPU_TOLERANCE)}
    assert not over, f"levels from the goldens recorded on {recorded['isa']} (this CPU: {isa_family()}): {over}"
