"""Training-step throughput of VATT models on this machine, with model FLOPs utilisation on record.

For each model: forward + VattLoss + backward on random inputs in training mode (DropToken as configured),
clips per second, the step's FLOPs (counted once with torch's FlopCounterMode, forward and backward, 2 FLOPs
per multiply-add), the achieved GFLOP/s, and its ratio to the machine's fp32 matrix-multiply GFLOP/s
measured in the same run (a 2048x2048 torch.mm), i.e. the model FLOPs utilisation (MFU).

    python bench/train_step.py                      # vatt_tiny at demo size, vatt_bbs at a reduced size
    python bench/train_step.py --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import vatt
from vatt.losses import VattLoss

# case -> (model, batch, overrides); vatt_bbs keeps its paper architecture but sees a reduced input; the
# "one text group" case runs every caption padded to the longest (text_length_groups=1) as the baseline of
# the length-grouped text tower
CASES = {
    "vatt_tiny": ("vatt_tiny", 16, {}),
    "vatt_tiny, one text group": ("vatt_tiny", 16, {"text_length_groups": 1}),
    "vatt_bbs": ("vatt_bbs", 4, {"num_frames": 8, "image_size": 112, "audio_samples": 25_600}),
}


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def make_batch(cfg, batch: int, positives: int = 5) -> dict[str, torch.Tensor]:
    L = cfg.max_text_len
    return {
        "video": torch.rand(batch, cfg.num_frames, cfg.in_chans, cfg.image_size, cfg.image_size) * 2 - 1,
        "audio": torch.rand(batch, cfg.audio_samples) * 2 - 1,
        "text_ids": torch.randint(2, cfg.vocab_size, (batch, positives, L)),
        "text_lengths": torch.randint(1, L + 1, (batch, positives)),
    }


def bench_model(case: str, name: str, batch: int, overrides: dict, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = vatt.create_model(name, **overrides).train()
    loss_fn = VattLoss()
    b = make_batch(model.cfg, batch)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(b["video"], b["audio"], b["text_ids"], b["text_lengths"])
        loss_fn(**out, text_lengths=b["text_lengths"])["loss"].backward()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(warmup):
        step()
    times = []
    for _ in tqdm(range(steps), desc=case, leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]  # median step time
    cfg = model.cfg
    return {
        "model": case,
        "batch": batch,
        "input": f"{cfg.num_frames}x{cfg.image_size}x{cfg.image_size}, {cfg.audio_samples} samples, "
        f"5x{cfg.max_text_len} tokens",
        "drop_token": cfg.drop_token,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": t,
        "clips_per_s": batch / t,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / t / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    peak = matmul_gflops()
    rows = [bench_model(c, *CASES[c], args.steps, args.warmup) for c in args.models]
    peak = max(peak, matmul_gflops())  # measured before and after the models; the better of the two
    for r in rows:
        r["mfu"] = r["gflops"] / peak
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{date.today()}  {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"load average {load:.1f}  torch {torch.__version__}  fp32 matmul 2048^3: {peak:.0f} GFLOP/s"
    )
    print("| model | batch | input | DropToken keep | params | step (s) | clips/s | GFLOP/step | GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['batch']} | {r['input']} | {r['drop_token']} | {r['params_m']:.1f}M | "
            f"{r['step_s']:.3f} | {r['clips_per_s']:.1f} | {r['gflop_per_step']:.1f} | {r['gflops']:.1f} | "
            f"{100 * r['mfu']:.0f}% |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"matmul_gflops": peak, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
