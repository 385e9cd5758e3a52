"""Interop check, outside CI: the other tools run sdcpu's demo folders, and sdcpu runs theirs.

Each tool runs in its own virtual environment, as their pins clash with sdcpu's and with each other's
(tools/make_interop_fixtures.py shows how to make them):

    python bench/interop.py --optimum-intel /tmp/ov/bin/python --genai /tmp/genai/bin/python \\
        --optimum-onnx /tmp/ort/bin/python [--sdxl-source DIR]

`--sdxl-source`: a diffusers SDXL folder (demo-xl's training output, tools/train_demo_xl.py) for the SDXL
rows: sdcpu's conversion of it in optimum-intel (OVStableDiffusionXLPipeline) and openvino.genai, and
sdcpu on optimum-intel's export of it.

Every run computes in f32, from the same prompt, scheduler (the demo's DDIM), steps, guidance and
initial latents. Each image is compared with sdcpu's on its own OpenVINO folder, in 8-bit levels, and
the table goes into docs/interop.md between the `<!-- interop -->` markers, with each venv's versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "interop.md"
START, END = "<!-- interop -->", "<!-- /interop -->"
SETTINGS = {"prompt": "a red circle on the left", "negative": "", "steps": 20, "guidance": 7.5, "size": 64}
SETTINGS_XL = SETTINGS | {"guidance": 5.0}  # SDXL's default guidance; no negative prompt: zeros as its half
# openvino.genai's generator handing over given initial latents (runner code, run in genai's venv)
GENAI_GIVEN = """
import openvino as ov, openvino_genai as genai
class Given(genai.Generator):  # the initial latents, as the others get them
    def __init__(self, array):
        genai.Generator.__init__(self)
        self.array = array
    def next(self):
        raise RuntimeError("only the initial latents are drawn")
    def randn_tensor(self, shape):
        return ov.Tensor(self.array.reshape(list(shape)))
"""
VERSIONS = """
import json, sys
from importlib import metadata
names = ["optimum-intel", "openvino-genai", "optimum-onnx", "optimum", "openvino", "onnxruntime", "diffusers"]
found = {}
for name in names:
    try:
        found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
"""
# Each snippet: argv[1] = folder, argv[2] = work folder holding latents.npy and settings.json; writes
# argv[3] (an HxWx3 uint8 .npy) and prints its environment's versions as JSON.
RUNNERS = {
    "optimum-intel": """
import torch
from optimum.intel import OVStableDiffusionPipeline
pipe = OVStableDiffusionPipeline.from_pretrained(sys.argv[1], ov_config={"INFERENCE_PRECISION_HINT": "f32"})
image = pipe(s["prompt"], negative_prompt=s["negative"] or None, num_inference_steps=s["steps"],
             guidance_scale=s["guidance"], latents=torch.from_numpy(latents), height=s["size"],
             width=s["size"], output_type="np").images[0]
""",
    "optimum-intel (SDXL)": """
import torch
from optimum.intel import OVStableDiffusionXLPipeline
pipe = OVStableDiffusionXLPipeline.from_pretrained(sys.argv[1], ov_config={"INFERENCE_PRECISION_HINT": "f32"})
image = pipe(s["prompt"], negative_prompt=s["negative"] or None, num_inference_steps=s["steps"],
             guidance_scale=s["guidance"], latents=torch.from_numpy(latents), height=s["size"],
             width=s["size"], output_type="np").images[0]
""",
    "openvino.genai": GENAI_GIVEN
    + """
pipe = genai.Text2ImagePipeline(sys.argv[1], "CPU", INFERENCE_PRECISION_HINT="f32")
image = pipe.generate(s["prompt"], negative_prompt=s["negative"], width=s["size"], height=s["size"],
                      num_inference_steps=s["steps"], guidance_scale=s["guidance"], generator=Given(latents)).data[0]
image = image / 255.0
""",
    "optimum (ONNX Runtime)": """
import torch
from optimum.onnxruntime import ORTStableDiffusionPipeline
pipe = ORTStableDiffusionPipeline.from_pretrained(sys.argv[1])
image = pipe(s["prompt"], negative_prompt=s["negative"] or None, num_inference_steps=s["steps"],
             guidance_scale=s["guidance"], latents=torch.from_numpy(latents), height=s["size"],
             width=s["size"], output_type="np").images[0]
""",
}
PROLOGUE = """
import sys, json, numpy as np
from pathlib import Path
work = Path(sys.argv[2])
s = json.loads((work / "settings.json").read_text())
latents = np.load(work / "latents.npy")
"""
EPILOGUE = """
np.save(sys.argv[3], np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8))
print(json.dumps(found))
"""


def run_tool(python: str, runner: str, folder: Path, work: Path, out: Path) -> dict[str, str]:
    code = VERSIONS + PROLOGUE + RUNNERS[runner] + EPILOGUE
    done = subprocess.run([python, "-c", code, str(folder), str(work), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{runner} failed on {folder}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(python: str, tool: str, work: Path, source: Path | None = None) -> Path:
    # The tool's own export of the demo source (or `source`), made by tools/make_interop_fixtures.py's code.
    out = work / tool
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); from make_interop_fixtures import export; "
        "from pathlib import Path; export(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[4]))"
    )
    source = source or ROOT / "src" / "sdcpu" / "models" / "demo" / "source"
    subprocess.run([python, "-c", code, tool, str(source), str(ROOT / "tools"), str(out)], check=True)
    return out


def sdcpu_image(folder: Path, latents: np.ndarray, s: dict = SETTINGS) -> np.ndarray:
    from sdcpu import Pipeline
    from sdcpu.runtime.options import LoadOptions

    pipe = Pipeline.load(folder, LoadOptions(compute_precision="f32", cache=False))
    result = pipe(s["prompt"], s["negative"], s["steps"], s["guidance"], seed=0, latents=latents)
    return np.asarray(result.images[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimum-intel", required=True, help="python of a venv with optimum-intel[openvino]")
    parser.add_argument("--genai", required=True, help="python of a venv with openvino-genai")
    parser.add_argument("--optimum-onnx", required=True, help="python of a venv with optimum-onnx[onnxruntime]")
    parser.add_argument("--sdxl-source", type=Path, help="a diffusers SDXL folder for the SDXL rows")
    args = parser.parse_args()
    from sdcpu.export.convert import convert
    from sdcpu.models import CONVERTED, SOURCE
    from sdcpu.runtime.precision import system_report

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16), dtype=np.float32)
        np.save(work / "latents.npy", latents)
        (work / "settings.json").write_text(json.dumps(SETTINGS))
        reference = sdcpu_image(CONVERTED, latents)
        convert(str(SOURCE), work / "sdcpu-onnx", format="onnx", progress=lambda _: None)
        theirs = {t: export(python, t, work) for t, python in [("optimum-intel", args.optimum_intel)]}
        theirs["optimum-onnx"] = export(args.optimum_onnx, "optimum-onnx", work)
        runs = [
            ("optimum-intel", args.optimum_intel, "sdcpu's OpenVINO demo folder", CONVERTED),
            ("openvino.genai", args.genai, "sdcpu's OpenVINO demo folder", CONVERTED),
            ("optimum (ONNX Runtime)", args.optimum_onnx, "sdcpu's ONNX folder of the demo", work / "sdcpu-onnx"),
        ]
        rows, versions = [], {}
        for runner, python, label, folder in runs:
            versions[runner] = run_tool(python, runner, folder, work, work / "image.npy")
            rows.append((runner, label, _levels(np.load(work / "image.npy"), reference)))
        for tool, folder in theirs.items():
            rows.append(
                ("sdcpu", f"{tool}'s export of the demo source", _levels(sdcpu_image(folder, latents), reference))
            )
        if args.sdxl_source is not None:
            rows += sdxl_rows(args.sdxl_source, args.optimum_intel, args.genai, work, versions)
    _write(rows, versions, system_report())


def sdxl_rows(source: Path, optimum_intel: str, genai: str, work: Path, versions: dict) -> list[tuple[str, str, int]]:
    """sdcpu's SDXL folder in optimum-intel and openvino.genai; sdcpu on optimum-intel's SDXL export."""
    from sdcpu.export.convert import convert

    xl = work / "xl"
    xl.mkdir()
    latents = np.load(work / "latents.npy")
    np.save(xl / "latents.npy", latents)
    (xl / "settings.json").write_text(json.dumps(SETTINGS_XL))
    convert(str(source), xl / "sdcpu-openvino", progress=lambda _: None)
    reference = sdcpu_image(xl / "sdcpu-openvino", latents, SETTINGS_XL)
    rows = []
    for runner, python in (("optimum-intel (SDXL)", optimum_intel), ("openvino.genai", genai)):
        versions[runner] = run_tool(python, runner, xl / "sdcpu-openvino", xl, xl / "image.npy")
        rows.append(
            (runner, f"sdcpu's OpenVINO folder of {source.name} (SDXL)", _levels(np.load(xl / "image.npy"), reference))
        )
    theirs = export(optimum_intel, "optimum-intel-sdxl", xl, source)
    rows.append(
        (
            "sdcpu",
            f"optimum-intel's export of {source.name} (SDXL)",
            _levels(sdcpu_image(theirs, latents, SETTINGS_XL), reference),
        )
    )
    return rows


def _levels(image: np.ndarray, reference: np.ndarray) -> int:
    return int(np.abs(image.astype(int) - reference.astype(int)).max())


def _write(rows: list[tuple[str, str, int]], versions: dict[str, dict[str, str]], system: dict[str, str]) -> None:
    ov_version = system["openvino"].split("-")[0]
    versions["sdcpu"] = {"sdcpu": metadata.version("sdcpu"), "openvino": ov_version}
    versions["sdcpu"]["onnxruntime"] = system["onnxruntime"]
    lines = [
        f"Measured by `python bench/interop.py` on {system['cpu']} with sdcpu {metadata.version('sdcpu')}, "
        f"OpenVINO {ov_version}; every run at f32 compute.",
        "",
        "| runs | on | largest difference from sdcpu on its own folder (of 255) |",
        "|---|---|---:|",
        *[f"| {runner} | {label} | {levels} |" for runner, label, levels in rows],
        "",
        "| environment | versions |",
        "|---|---|",
        *[
            f"| {runner} | {', '.join(f'{k} {v}' for k, v in sorted(found.items()))} |"
            for runner, found in versions.items()
        ],
    ]
    text = DOC.read_text()
    head, rest = text.split(START)
    DOC.write_text(head + START + "\n" + "\n".join(lines) + "\n" + END + rest.split(END)[1])
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
