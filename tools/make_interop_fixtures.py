"""Write the small fixtures under tests/data/interop: a tiny random Stable Diffusion pipeline in
diffusers' layout, and its exports by optimum-intel (OpenVINO) and optimum (ONNX).

The tools pin versions that clash with sdcpu's test environment, so the exports are made once, each in
its own virtual environment, and committed (tests/data/interop/README.md records the versions):

    python -m venv /tmp/ov && /tmp/ov/bin/pip install torch==2.13.0 optimum-intel[openvino] diffusers
    python -m venv /tmp/ort && /tmp/ort/bin/pip install torch==2.13.0 optimum-onnx[onnxruntime] diffusers
    /tmp/ov/bin/python tools/make_interop_fixtures.py source     # the diffusers folder (needs torch, diffusers)
    /tmp/ov/bin/python tools/make_interop_fixtures.py optimum-intel
    /tmp/ort/bin/python tools/make_interop_fixtures.py optimum-onnx
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "interop"
TOOLS = {"optimum-intel": "optimum-intel", "optimum-onnx": "optimum-onnx"}


def write_source(folder: Path) -> None:
    # The tests' tiny SD 1.x pipeline at a quarter of its UNet widths, with the built-in byte-level
    # vocabulary (514 tokens), so that the fixtures stay small whatever ../shared holds.
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
    import tiny

    tiny.UNET.update(block_out_channels=(16, 32), norm_num_groups=8)
    tiny.TEXT.update(vocab_size=514, bos_token_id=512, eos_token_id=513)
    tiny.SD1_TOKENIZER = Path("/nonexistent")  # the byte-level tokenizer, not the real one
    tiny.write_diffusers_folder(folder, seed=0)


def export(tool: str, source: Path, out: Path) -> None:
    if tool == "optimum-intel":
        from optimum.intel import OVStableDiffusionPipeline

        OVStableDiffusionPipeline.from_pretrained(source, export=True, compile=False).save_pretrained(out)
    elif tool == "optimum-intel-sdxl":
        from optimum.intel import OVStableDiffusionXLPipeline

        OVStableDiffusionXLPipeline.from_pretrained(source, export=True, compile=False).save_pretrained(out)
    else:
        from optimum.exporters.onnx import main_export

        main_export(str(source), out, task="text-to-image", library_name="diffusers")


def relative_sources(out: Path) -> None:
    # The tools record the absolute path they read from (`_name_or_path`); keep it relative to FIXTURES.
    for config in out.rglob("*.json"):
        data = json.loads(config.read_text())
        if isinstance(data, dict) and "_name_or_path" in data:
            data["_name_or_path"] = str(Path(data["_name_or_path"]).relative_to(FIXTURES))
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def record_versions(tool: str) -> None:
    path = FIXTURES / "versions.json"
    versions = json.loads(path.read_text()) if path.exists() else {}
    names = [TOOLS[tool], "optimum", "torch", "diffusers", "transformers", "openvino", "onnx", "onnxruntime"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions[tool] = found
    path.write_text(json.dumps(versions, indent=2, sort_keys=True) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["source", *TOOLS])
    what = parser.parse_args().what
    target = FIXTURES / what
    shutil.rmtree(target, ignore_errors=True)
    if what == "source":
        write_source(target)
    else:
        export(what, FIXTURES / "source", target)
        relative_sources(target)
        record_versions(what)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
