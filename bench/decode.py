"""Joint CTC/attention decoding speed: the batched search against the unbatched per-hypothesis reference.

    python bench/decode.py [--utterances 8] [--beam 10] [--ctc-weight 0.1] [--min-frames 50] [--max-frames 100]
                           [--threads 1]

A tiny AVSR model (random weights) encodes a handful of synthetic utterances once; then the same
encoder output is decoded three ways, in the same run: the batched search over all utterances at once,
the batched search one utterance at a time, and the per-hypothesis reference
(``avsr.decoding.beam_search_reference``, ESPnet's ``BeamSearch`` loop structure). All three must
return the same n-best lists; the script checks that and reports wall-clock seconds and speed-ups.
A random model's CTC head emits a label on almost every frame; its weights are sharpened and its blank
logit raised (``--blank-bias``) so that hypotheses end by eos at speech-like lengths, as a trained
model's do (about 11 units per second of input with the defaults, a character rate).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import torch

import avsr
from avsr.decoding import beam_search_reference, joint_beam_search


def _machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def _timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="avsr_transformer_tiny")
    p.add_argument("--utterances", type=int, default=8)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--ctc-weight", type=float, default=0.1)
    p.add_argument("--min-frames", type=int, default=50)
    p.add_argument("--max-frames", type=int, default=100)
    p.add_argument("--blank-bias", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=2, help="best of N for the batched searches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny tensors: 1 is fastest)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = avsr.create_model(args.model, modalities="a").eval()  # audio only: the decoder sees the same
    with torch.no_grad():
        model.ctc_head.weight.mul_(6.0)
        model.ctc_head.bias[0] += args.blank_bias
    spf = model.cfg.samples_per_frame
    frames = torch.linspace(args.min_frames, args.max_frames, args.utterances).round().long()
    audio = 0.1 * torch.randn(args.utterances, int(frames.max()) * spf)
    with torch.no_grad():
        enc = model.encode(audio=audio, audio_lengths=frames * spf, modality="a")
    kw = {"beam_size": args.beam, "ctc_weight": args.ctc_weight, "nbest": args.beam}
    search_args = (enc["enc_out"], enc["enc_lengths"], enc["ctc_log_probs"], model.decoder, model.sos, model.eos)

    def single(u: int) -> tuple:
        t = int(frames[u])
        return (
            enc["enc_out"][u : u + 1, :t],
            enc["enc_lengths"][u : u + 1],
            enc["ctc_log_probs"][u : u + 1, :t],
            model.decoder,
            model.sos,
            model.eos,
        )

    t_batch, batched = _timed(lambda: joint_beam_search(*search_args, **kw), args.repeats)
    t_one, one = _timed(lambda: [joint_beam_search(*single(u), **kw)[0] for u in range(args.utterances)], args.repeats)
    t_ref, ref = _timed(lambda: beam_search_reference(*search_args, **kw), 1)

    same = all(
        [h.tokens for h in a] == [h.tokens for h in b] == [h.tokens for h in c] for a, b, c in zip(batched, one, ref)
    )
    seconds_audio = float(frames.sum()) / model.cfg.fps
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "utterances": args.utterances,
        "frames": [int(f) for f in frames],
        "beam": args.beam,
        "ctc_weight": args.ctc_weight,
        "mean_best_length": sum(len(h[0].tokens) for h in batched) / args.utterances,
        "same_nbest": same,
        "batched_s": round(t_batch, 3),
        "one_at_a_time_s": round(t_one, 3),
        "reference_s": round(t_ref, 3),
        "speedup_batched_vs_reference": round(t_ref / t_batch, 1),
        "speedup_one_at_a_time_vs_reference": round(t_ref / t_one, 1),
        "rtf_batched": round(t_batch / seconds_audio, 4),
    }
    print(f"{'search':<28}{'seconds':>10}{'x reference':>14}")
    print(f"{'reference (per hypothesis)':<28}{t_ref:>10.3f}{1.0:>14.1f}")
    print(f"{'batched, one utterance':<28}{t_one:>10.3f}{t_ref / t_one:>14.1f}")
    print(f"{'batched, all utterances':<28}{t_batch:>10.3f}{t_ref / t_batch:>14.1f}")
    print(json.dumps(result))
    if not same:
        raise SystemExit("n-best lists differ between the searches")


if __name__ == "__main__":
    main()
