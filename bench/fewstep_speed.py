"""Few-step speed on the SD 1.5 architecture (random weights), 512x512: 1 and 4 steps, guidance off, with
the full VAE decoder and with TAESD's (a random AutoencoderTiny of TAESD's architecture), sdcpu next to
diffusers-PyTorch with the same settings (docs/benchmarks.md), and next to the peers where their venvs
are given (bench/peer_runners.py):
- optimum-intel and openvino.genai on sdcpu's folder (the same graphs), the tiny decoder given to them
  as their vae_decoder, as FastSD CPU gives optimum-intel TAESD;
- stable-diffusion.cpp at q8_0 on the same weights as one file, with its --taesd for the tiny decoder.

    python bench/fewstep_speed.py --work /tmp/sdcpu-modes --runs 3 \\
        [--optimum-python OV/bin/python] [--sdcpp-python SDCPP/bin/python]

Each runner is its own process: it loads, generates once to warm up (compilation, first-call costs), then
`--runs` times; the medians are "end to end after a warm start": text encoder, UNet steps, decode. Runners
alternate. sdcpu runs its int8-hybrid conversion with the load options `auto` picks on this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import peer_runners

from sdcpu.bench.machine import machine_line as machine
from sdcpu.bench.machine import peak_rss_gb
from sdcpu.bench.peers import PROMPT, random_pipeline
from sdcpu.bench.timing import timed_images

ROOT = Path(__file__).resolve().parents[1]
SD14 = ROOT.parent / "shared" / "reference-configs" / "stable-diffusion-v1-4"
# (steps, decoder, sdcpu's token downsampling factor: 0 off, 2 ToDo's approximate attention; diffusers: off)
TURBO_SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "timestep_spacing": "trailing"}
CASES = [(1, "tiny", 0), (1, "tiny", 2), (1, "full", 0), (4, "tiny", 0), (4, "full", 0)]
FOLDER, SINGLE_FILE = "sd14-turbo-int8-hybrid-tiny", "sd14.safetensors"
PEERS = ("optimum-intel", "openvino.genai", "stable-diffusion.cpp q8_0")  # run where token downsampling is off


def prepare_fast(work: Path) -> Path:
    """SD 1.5 random weights (sdcpu.bench.peers) with a random TAESD, converted at int8-hybrid. The scheduler
    is SD-Turbo's (Euler a, trailing timesteps), so the conversion takes int8-hybrid's few-step recipe."""
    from diffusers import AutoencoderTiny

    from sdcpu.export.calibration import CalibrationSettings
    from sdcpu.export.convert import convert

    source, taesd, out = work / "sd14-diffusers", work / "taesd", work / FOLDER
    if not (source / "model_index.json").exists():
        random_pipeline(SD14, source)
    config = source / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | TURBO_SCHEDULER, indent=2))
    if not (taesd / "config.json").exists():
        AutoencoderTiny().save_pretrained(taesd)  # diffusers' defaults are TAESD's architecture
    if not (out / "sdcpu.json").exists():
        # 8 recorded UNet calls instead of 32: random weights, so calibration sets no quality, only time
        calibration = CalibrationSettings(size=8)
        convert(str(source), out, "openvino", "int8-hybrid", calibration=calibration, tiny_vae=taesd, force=True)
    if not (work / SINGLE_FILE).exists():
        from compare_peers import single_file

        single_file(source, work / SINGLE_FILE)
    peer_runners.tiny_decoder_view(out, work / f"{FOLDER}-view")
    return out


def run_peer(peer: str, work: Path, steps: int, decoder: str, runs: int) -> dict:
    tiny = decoder == "tiny"
    folder = work / (f"{FOLDER}-view" if tiny else FOLDER)
    if peer == "optimum-intel":
        return peer_runners.fast_optimum(folder, steps, runs)
    if peer == "openvino.genai":
        return peer_runners.fast_genai(folder, steps, runs)
    taesd = work / "taesd" / "diffusion_pytorch_model.safetensors" if tiny else None
    return peer_runners.fast_sdcpp(work / SINGLE_FILE, taesd, steps, runs, peer.rsplit(" ", 1)[1])


def run_sdcpu(work: Path, steps: int, decoder: str, runs: int, todo: int) -> dict:
    from sdcpu.runtime.options import LoadOptions
    from sdcpu.runtime.pipelines.base import Pipeline

    options = LoadOptions(decoder=decoder, token_downsampling=todo or 1)
    pipe = Pipeline.load(work / FOLDER, options)
    generate = lambda seed: pipe(PROMPT, steps=steps, guidance=0.0, scheduler="euler-a", seed=seed)  # noqa: E731
    times = timed_images(generate, runs)
    return {"seconds": times, "compute": pipe.runtime_info()["compute_precision"], "peak_rss_gb": peak_rss_gb()}


def run_diffusers(work: Path, steps: int, decoder: str, runs: int, todo: int) -> dict:
    import torch
    from diffusers import AutoencoderTiny, EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(2)
    pipe = StableDiffusionPipeline.from_pretrained(work / "sd14-diffusers", safety_checker=None)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    if decoder == "tiny":
        pipe.vae = AutoencoderTiny.from_pretrained(work / "taesd")
    pipe.set_progress_bar_config(disable=True)

    def generate(seed: int) -> None:
        with torch.no_grad():
            pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, generator=torch.manual_seed(seed))

    return {"seconds": timed_images(generate, runs), "compute": "f32 (PyTorch)", "peak_rss_gb": peak_rss_gb()}


def spawn(runner: str, work: Path, case: tuple[int, str, int], runs: int, python: str = sys.executable) -> dict:
    """One runner in a fresh process (a peer's in its venv); a peer that fails gets its error, not a stop."""
    steps, decoder, todo = case
    command = [python, __file__, "--work", str(work), "--runs", str(runs), "--worker", runner]
    command += ["--steps", str(steps), "--decoder", decoder, "--todo", str(todo if runner == "sdcpu" else 0)]
    env = peer_runners.peer_env() if python != sys.executable else None
    out = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    line = next((row for row in out.stdout.splitlines() if row.startswith("RESULT ")), None)
    if line is None:
        if runner in PEERS:
            return {"error": (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]}
        raise SystemExit(f"{runner} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sdcpu-modes"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=("sdcpu", "diffusers", *PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--todo", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--case", type=int, action="append", help="run only CASES[i] (repeatable); the rest kept")
    parser.add_argument("--optimum-python", help="python of a venv with optimum-intel and openvino-genai")
    parser.add_argument("--sdcpp-python", help="python of a venv with stable-diffusion-cpp-python")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fewstep_speed.json")
    args = parser.parse_args()
    if args.worker in PEERS:
        result = run_peer(args.worker, args.work, args.steps, args.decoder, args.runs)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.worker:
        run = run_sdcpu if args.worker == "sdcpu" else run_diffusers
        print("RESULT " + json.dumps(run(args.work, args.steps, args.decoder, args.runs, args.todo)), flush=True)
        return
    pythons = dict.fromkeys(PEERS[:2], args.optimum_python) | {PEERS[2]: args.sdcpp_python}
    runners = [("sdcpu", sys.executable), ("diffusers", sys.executable)]
    runners += [(peer, python) for peer, python in pythons.items() if python]
    prepare_fast(args.work)
    kept = json.loads(args.out.read_text())["rows"] if args.case and args.out.exists() else []
    rows = {(r["steps"], r["decoder"], r.get("token_downsampling", 0)): r for r in kept}
    for case in [CASES[i] for i in args.case] if args.case else CASES:
        row: dict = {"steps": case[0], "decoder": case[1], "token_downsampling": case[2]}
        for runner, python in runners:
            if runner in PEERS and case[2]:
                continue  # token downsampling is sdcpu's alone
            result = spawn(runner, args.work, case, args.runs, python)
            row[runner] = result | ({"median_s": statistics.median(result["seconds"])} if "seconds" in result else {})
        row["ratio"] = row["sdcpu"]["median_s"] / row["diffusers"]["median_s"]
        print(json.dumps(row), flush=True)
        rows[case] = row | {"machine": machine()}
    ordered = [rows[c] for c in CASES if c in rows]
    args.out.write_text(json.dumps({"prompt": PROMPT, "rows": ordered}, indent=2) + "\n")


if __name__ == "__main__":
    main()
