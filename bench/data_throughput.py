"""Clips per second through the training DataLoader (decode, crop, augment, tokenize, collate).

    python bench/data_throughput.py [--workers 0 1 2] [--batches 12] [--cache DIR]

Two settings, each with 0, 1 and 2 DataLoader workers:

- ``vatt``: the paper's pretraining preprocessing (32 frames at 10 fps, 224 crop from a 256 resize,
  48 kHz audio, 16 tokens x 5 positives) on YouTube-like media written once into the cache: 10 s
  640x360 H.264 at 30 fps with 44.1 kHz AAC, moving shapes over a textured background;
- ``demo``: the CPU demo preprocessing (``data.synth.shapes.demo_preprocess``: 8 frames of 64x64,
  16 kHz) on the built-in shapes corpus (112x112, 10 fps), generated into the cache on first use;
- ``demo-cached``: the same with decoded clips kept in memory (``cache_mb``), filled beforehand by
  ``ManifestDataset.prefill`` with one process per core (its time is printed), as ``pretrain.py`` does.

Each row times ``--batches`` batches after one warm-up batch (worker start-up excluded) and prints a
markdown table with the date, machine and command for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.collate import collate
from data.manifest import ManifestDataset, caption_texts, read_manifest
from data.synth import shapes
from data.synth.mediawriter import write_mp4
from data.tokenizer import Tokenizer, train_tokenizer
from data.transforms import PreprocessConfig
from train.run_dir import cpu_threads

VATT = PreprocessConfig()  # paper defaults


def youtube_like_corpus(root: Path, count: int = 12, seconds: float = 10.0) -> Path:
    """``count`` 640x360 30 fps clips with 44.1 kHz audio, and a manifest; reused when present."""
    manifest = root / "youtube_like.jsonl"
    if manifest.exists():
        return manifest
    rng = np.random.default_rng(0)
    h, w, fps, sr = 360, 640, 30.0, 44100
    rows = []
    for i in range(count):
        path = root / f"yt_{i:03d}.mp4"
        if not path.exists():
            n = int(seconds * fps)
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.clip(60 + 40 * np.sin(xx / 23.0 + i) * np.cos(yy / 17.0), 0, 255).astype(np.uint8)
            frames = np.repeat(base[None, :, :, None], 3, axis=3).repeat(n, axis=0)  # (T, H, W, 3) uint8
            for _ in range(3):  # moving rectangles of random colours
                colour = rng.integers(40, 255, size=3).astype(np.uint8)
                x0, y0, vx, vy = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-80, 80), rng.uniform(-50, 50)
                for t in range(n):
                    x, y = int(x0 + vx * t / fps) % (w - 80), int(y0 + vy * t / fps) % (h - 60)
                    frames[t, y : y + 60, x : x + 80] = colour
            t = np.arange(int(seconds * sr)) / sr
            audio = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.02 * rng.normal(size=t.shape)
            write_mp4(path, frames, fps, audio.astype(np.float32), sr, preset="veryfast")
        caps = [{"text": f"video {i} part {k} shows boxes", "start": 2.0 * k, "end": 2.0 * k + 2} for k in range(5)]
        rows.append({"media": path.name, "id": f"yt{i}", "captions": caps})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def throughput(ds: ManifestDataset, workers: int, batch: int, batches: int) -> float:
    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0
    )
    it = iter(loader)
    next(it)  # warm-up: worker start-up, first decodes
    clips, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        clips += len(b["ids"])
    return clips / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=12, help="timed batches per row")
    p.add_argument("--settings", nargs="+", default=["vatt", "demo"], choices=["vatt", "demo", "demo-cached"])
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vatt-bench-data"), help="media directory")
    p.add_argument("--decode-threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # workers and decoders use the cores; torch ops here are small
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    rows = []
    for setting in args.settings:
        if setting == "vatt":
            manifest, cfg, batch = youtube_like_corpus(cache), VATT, 8
            media = "640x360 30 fps H.264, 44.1 kHz AAC, 10 s"
        else:  # demo, demo-cached
            corpus = shapes.generate(cache / "shapes-2000-256", 2000, 256, progress=True)
            manifest, cfg, batch = corpus / "train.jsonl", shapes.demo_preprocess(), 32
            media = "shapes corpus: 112x112 10 fps, 16 kHz AAC, 3.2 s"
        tok_file = cache / f"{setting.split('-')[0]}.model"
        if not tok_file.exists():
            train_tokenizer(caption_texts(read_manifest(manifest)), 1000, tok_file)
        cache_mb = 2048 if setting == "demo-cached" else 0
        ds = ManifestDataset(
            manifest, cfg, Tokenizer(tok_file), train=True, decode_threads=args.decode_threads, cache_mb=cache_mb
        )
        if cache_mb:
            t0 = time.perf_counter()
            n = ds.prefill(num_workers=cpu_threads(0, 1))  # one decoding process per core
            print(f"{setting}: prefill decoded {n} clips in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        shape = f"{cfg.num_frames}x{cfg.image_size}x{cfg.image_size} @ {cfg.fps:g} fps, {cfg.sample_rate // 1000} kHz"
        for workers in args.workers:
            rate = throughput(ds, workers, batch, args.batches)
            rows.append((setting, shape, media, batch, workers, rate))
            print(f"{setting} workers={workers}: {rate:.1f} clips/s", file=sys.stderr)

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    cmd = "python bench/data_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Date: {datetime.date.today().isoformat()}  ")
    system = f"{platform.system()} {platform.release()}"
    print(f"Machine: {cpu}, {os.cpu_count()} cores, {system}, torch {torch.__version__}  ")
    print(f"Command: `{cmd.strip()}` (train transforms, decode threads {args.decode_threads}, {args.batches} batches)")
    print()
    print("| setting | clip | media | batch | workers | clips/s |")
    print("|---|---|---|---|---|---|")
    for setting, shape, media, batch, workers, rate in rows:
        print(f"| {setting} | {shape} | {media} | {batch} | {workers} | {rate:.1f} |")


if __name__ == "__main__":
    main()
