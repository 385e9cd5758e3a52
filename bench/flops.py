"""Count the floating-point operations of one guided SD 1.5 UNet step and of the 512x512 VAE decode
with torch.utils.flop_counter (a multiply-add counts as 2 FLOP), and state this machine's fp32 peak,
for the GFLOP/s columns of bench/compare_peers.py.

    python bench/flops.py --model /tmp/sd15/diffusers --out /tmp/sd15/flops.json   (needs [export])
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode


def count(fn) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a diffusers SD 1.x folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ghz", type=float, default=2.45, help="sustained all-core clock")
    parser.add_argument("--flop-per-cycle", type=int, default=32, help="AVX2 + 2 FMA units: 2 x 8 lanes x 2")
    args = parser.parse_args()
    unet = UNet2DConditionModel.from_pretrained(args.model / "unet").eval()
    vae = AutoencoderKL.from_pretrained(args.model / "vae").eval()
    sample, text = torch.randn(2, 4, 64, 64), torch.randn(2, 77, unet.config.cross_attention_dim)
    record = {
        "unet_step_gflop": count(lambda: unet(sample, torch.tensor([500, 500]), text)),
        "vae_decode_gflop": count(lambda: vae.decode(torch.randn(1, 4, 64, 64))),
        "cores": os.cpu_count(),
        "peak_gflops": (os.cpu_count() or 1) * args.ghz * args.flop_per_cycle,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
