"""Render the fp32 tables of docs/benchmarks.md ("Earlier runs") from the JSON that benchmark.py writes.

python bench/report.py docs/benchmarks.json   (paste under "Earlier runs")
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {
    "pytorch": "diffusers + PyTorch (fp32)",
    "sdcpu-openvino": "sdcpu, OpenVINO IR (fp32)",
    "sdcpu-onnxruntime": "sdcpu, ONNX Runtime (fp32)",
}
ROWS = [
    ("unet_step_s", "UNet step, 512x512, guidance (batch 2), median", "s"),
    ("unet_first_step_s", "first UNet step (includes OpenVINO's compile)", "s"),
    ("text_encoder_s", "text encoder (prompt + negative)", "s"),
    ("vae_decode_s", "VAE decode 512x512", "s"),
    ("end_to_end_s", "end to end, {steps} steps", "s"),
    ("load_s", "load", "s"),
    ("peak_rss_gb", "peak RSS", "GB"),
]


def render_steps(steps: dict) -> list[str]:
    runners = list(steps["median_s"])
    return [
        "",
        "## UNet step, side by side",
        "",
        f"Each runner in its own process, called in turn for {steps['rounds']} rounds (A B C A B C ...), after a",
        "warm-up call; same inputs (512x512, batch 2). Produced by `python bench/unet_steps.py`.",
        "",
        "| | " + " | ".join(NAMES.get(r, r) for r in runners) + " |",
        "|---|" + "---:|" * len(runners),
        "| median step | " + " | ".join(f"{steps['median_s'][r]:.2f} s" for r in runners) + " |",
        "| ratio to PyTorch | " + " | ".join(f"{steps['ratio_to_pytorch'][r]:.2f}x" for r in runners) + " |",
        "| all steps | " + " | ".join(", ".join(f"{t:.1f}" for t in steps["times_s"][r]) for r in runners) + " |",
    ]


def render(record: dict) -> str:
    median = record["median"]
    runners = list(median)
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {record['machine']}.",
        "",
        "Stable Diffusion 1.5 architecture with random weights (configs of `stable-diffusion-v1-4`), 512x512,",
        f"classifier-free guidance, Euler scheduler, {record['steps']} steps. Each runner runs in its own process;",
        f"runners alternate, {record['rounds']} round(s); the UNet step is the median over the steps of a run",
        "(the first step is reported apart). Produced by `python bench/benchmark.py` and `bench/report.py`.",
        "",
        "| | " + " | ".join(NAMES.get(r, r) for r in runners) + " |",
        "|---|" + "---:|" * len(runners),
    ]
    for key, label, unit in ROWS:
        cells = [f"{median[r][key]:.2f} {unit}" for r in runners]
        lines.append(f"| {label.format(steps=record['steps'])} | " + " | ".join(cells) + " |")
    if "pytorch" in median:
        base = median["pytorch"]
        lines += ["", "Ratios to diffusers + PyTorch in the same run (lower is better):", ""]
        lines += [
            "| | " + " | ".join(NAMES.get(r, r) for r in runners if r != "pytorch") + " |",
            "|---|" + "---:|" * (len(runners) - 1),
        ]
        for key, label, _ in ROWS[:1] + ROWS[3:5] + ROWS[6:]:
            cells = [f"{median[r][key] / base[key]:.2f}x" for r in runners if r != "pytorch"]
            lines.append(f"| {label.format(steps=record['steps'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading these numbers: the machine is shared and noisy (the same PyTorch step measured 12.8 s to",
        "19 s across runs on it), so only ratios within one run are compared. sdcpu's peak RSS is higher than",
        "PyTorch's here; not yet profiled, the likely cause is that both engines hold the weights and a compiled",
        "copy of them while compiling, with all components loaded at once. Lowering it is future work.",
    ]
    if record.get("convert_s"):
        lines += [
            "",
            "Conversion time (from a diffusers folder, fp32): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in record["convert_s"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = render(json.loads(Path(sys.argv[1]).read_text()))
    if len(sys.argv) > 2:
        text += "\n".join(render_steps(json.loads(Path(sys.argv[2]).read_text()))) + "\n"
    print(text, end="")
