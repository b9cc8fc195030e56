"""VATT contrastive pretraining: NCE between video and audio, MIL-NCE between video and text.

    accelerate launch pretrain.py [--config configs/pretrain/FILE.yaml] [key=value ...]

With no arguments it trains the CPU-sized ``vatt_tiny`` on the built-in synthetic corpus (generated
into ``.cache/`` on first use) and ends with a zero-shot retrieval table on the held-out clips. The
paper's recipes live in ``configs/pretrain/``. One optimizer step consumes ``batch_size`` clips in
all, split over processes and ``grad_accum`` micro-batches; contrastive negatives span one micro-batch
across all processes (embeddings are gathered with gradients), not the accumulated batch.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

import vatt
from data.collate import DataFailureError, FailureTracker, batch_size, collate
from data.config import ConfigError, check_paths, check_ranges, parse_config, save_config, to_dict
from data.export import save_export
from data.manifest import ManifestDataset, ManifestEntry, ManifestError, read_manifest
from data.rundir import (
    MetricsLog,
    RunDirError,
    StateError,
    StateManager,
    StopRequest,
    agree,
    atomic_write_json,
    cpu_threads,
    failure_totals,
    open_shared_run_dir,
    plot_curves,
    setup_logging,
)
from data.sampling import SeededItems, StepBatchSampler
from data.schedule import warmup_cosine
from data.synth import shapes
from data.tokenizer import Tokenizer, train_tokenizer
from data.transforms import PreprocessConfig
from eval.retrieval import evaluate_retrieval, format_table
from vatt.losses import VattLoss

log = logging.getLogger("pretrain")


def _cpu_preprocess() -> PreprocessConfig:
    # The built-in corpus at CPU size: 8 frames of 64x64 over the 3.2 s clip, audio at 4 kHz: its notes
    # (262-990 Hz with their contours) and their second harmonics fit under 2 kHz, in 100 audio tokens.
    return shapes.demo_preprocess(sample_rate=4000)


@dataclass
class DataConfig:
    train_manifests: list[str] = field(default_factory=list)  # empty: the built-in synthetic corpus
    val_manifest: str = ""  # empty with the synthetic corpus: its held-out split
    synth_dir: str = ".cache"  # the corpus goes to <synth_dir>/shapes-<train>-<val>
    synth_train: int = 2000
    synth_val: int = 256
    tokenizer: str = ""  # a SentencePiece .model; empty: train one on the training captions
    vocab_size: int = 1000
    # Loader processes; none by default: the built-in corpus is decoded once into memory (cache_mb), after
    # which loading is a few cheap transforms, and a worker would only take CPU from the model's threads.
    num_workers: int = 0
    decode_threads: int = 1
    # Decoded training clips kept in memory per process (MB); 0 turns it off. With it, clips of entries
    # no longer than one clip (every video of the built-in corpus) are decoded before training, one
    # process per core; longer entries decode on demand, and with random windows in long videos (the
    # paper configs) the cache would rarely hit.
    cache_mb: float = 1024
    max_fail_fraction: float = 0.01
    shuffle_captions: bool = False  # control run: captions permuted across training videos


@dataclass
class ModelConfig:
    name: str = "vatt_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture fields, e.g. {"video.depth": 2}
    drop_token: float = 0.5  # keep ratio of video and audio tokens in training


@dataclass
class OptimConfig:
    lr: float = 5e-4  # VATT: 1e-4 at batch 2048 (configs/pretrain)
    end_lr: float = 1e-4
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 disables clipping


@dataclass
class PretrainConfig:
    output_dir: str = ""  # empty: a fresh timestamped directory under runs/
    max_steps: int = 1000
    seed: int = 0
    resume: Literal["auto", "never"] = "auto"  # auto: continue the run in output_dir (same config)
    overwrite: bool = False  # replace the run already in output_dir
    batch_size: int = 64  # clips per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    cpu_threads: int = 0  # torch threads per process on a CPU; 0: the machine's cores shared among processes
    temperature: float = 0.07
    nce_weight: float = 1.0  # loss = (nce_weight * NCE + milnce_weight * MIL-NCE) / (sum of weights); VATT: 1, 1
    milnce_weight: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # retrieval eval + export every N steps; 0: only at the end
    save_every: int = 125  # training state, and at the end; 0: only on SIGTERM / Ctrl-C
    keep_states: int = 2
    eval_clips_per_video: int = 1  # the built-in corpus's videos are one clip long; VATT's recipe: 4
    eval_batch_size: int = 64
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=_cpu_preprocess)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


# Every count and fraction of the config, checked before any work.
RANGES = {
    "max_steps": (">=", 1),
    "batch_size": (">=", 1),
    "grad_accum": (">=", 1),
    "cpu_threads": (">=", 0),
    "temperature": (">", 0),
    "nce_weight": (">=", 0),
    "milnce_weight": (">=", 0),
    "log_every": (">=", 1),
    "eval_every": (">=", 0),
    "save_every": (">=", 0),
    "keep_states": (">=", 1),
    "eval_clips_per_video": (">=", 1),
    "eval_batch_size": (">=", 1),
    "data.synth_train": (">=", 1),
    "data.synth_val": (">=", 1),
    "data.vocab_size": (">=", 8),
    "data.num_workers": (">=", 0),
    "data.decode_threads": (">=", 0),
    "data.cache_mb": (">=", 0),
    "data.max_fail_fraction": ("in", 0, 1),
    "model.drop_token": ("in", 0.01, 1),
    "optim.lr": (">", 0),
    "optim.end_lr": (">=", 0),
    "optim.warmup_steps": (">=", 0),
    "optim.betas": ("in", 0, 0.999999),
    "optim.weight_decay": (">=", 0),
    "optim.grad_clip": (">=", 0),
}


def check_config(cfg: PretrainConfig) -> None:
    """What the dataclass types cannot say, before any work; raises :class:`ConfigError` naming the key."""
    check_ranges(cfg, RANGES)
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    if cfg.nce_weight + cfg.milnce_weight <= 0:
        raise ConfigError("config keys 'nce_weight' and 'milnce_weight' are both 0; expected a positive sum")


def read_manifests(cfg: PretrainConfig) -> tuple[list[list[ManifestEntry]], str]:
    """Training manifests (read, so a bad line stops the run before any work) and the val manifest path.

    With no manifests configured, the built-in corpus (generated on first use).
    """
    d = cfg.data
    train_paths, val = list(d.train_manifests), d.val_manifest
    if not train_paths:
        corpus = shapes.generate(
            Path(d.synth_dir) / f"shapes-{d.synth_train}-{d.synth_val}", d.synth_train, d.synth_val
        )
        train_paths, val = [str(corpus / "train.jsonl")], val or str(corpus / "val.jsonl")
    manifests = [read_manifest(p) for p in train_paths]
    read_manifest(val)
    if d.shuffle_captions:
        manifests = [_shuffle_captions(m, cfg.seed) for m in manifests]
    return manifests, val


def prepare_tokenizer(cfg: PretrainConfig, manifests: list[list[ManifestEntry]], run_dir: Path) -> Path:
    """The configured SentencePiece model, or one trained on the training captions into the run directory."""
    tok = Path(cfg.data.tokenizer) if cfg.data.tokenizer else run_dir / "tokenizer.model"
    if not cfg.data.tokenizer and not tok.exists():
        train_tokenizer([e for m in manifests for e in m], cfg.data.vocab_size, tok)
    return tok


def _shuffle_captions(entries: list[ManifestEntry], seed: int) -> list[ManifestEntry]:
    perm = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed)).tolist()
    return [dataclasses.replace(e, captions=entries[j].captions) for e, j in zip(entries, perm)]


def model_overrides(cfg: PretrainConfig, vocab_size: int) -> dict[str, Any]:
    """Input sizes come from the preprocessing config and the tokenizer, never typed twice."""
    pp = cfg.preprocess
    return {
        "num_frames": pp.num_frames,
        "image_size": pp.image_size,
        "audio_samples": pp.audio_samples,
        "max_text_len": pp.max_text_len,
        "vocab_size": vocab_size,
        "drop_token": cfg.model.drop_token,
        **cfg.model.overrides,
    }


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_config(PretrainConfig, sys.argv[1:] if argv is None else argv)
        check_config(cfg)
        check_paths(cfg, files=["data.train_manifests", "data.val_manifest", "data.tokenizer"])
    except ConfigError as exc:
        sys.exit(f"pretrain.py: {exc}")

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
    setup_logging(main_process=accelerator.is_main_process)
    world = accelerator.num_processes
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.cpu_threads, world))
    micro_batch = cfg.batch_size // cfg.grad_accum  # over all processes
    if micro_batch % world:
        sys.exit(f"pretrain.py: batch_size/grad_accum = {micro_batch} is not divisible by {world} processes")

    try:
        with accelerator.main_process_first():
            manifests, val_manifest = read_manifests(cfg)
    except ManifestError as exc:
        sys.exit(f"pretrain.py: {exc}")
    try:
        run_dir = open_shared_run_dir(
            accelerator, cfg.output_dir, to_dict(cfg), resume=cfg.resume, overwrite=cfg.overwrite, prefix="pretrain"
        )
    except RunDirError as exc:
        sys.exit(f"pretrain.py: {exc}")
    with accelerator.main_process_first():
        tok_file = prepare_tokenizer(cfg, manifests, run_dir)
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    tokenizer = Tokenizer(tok_file)

    set_seed(cfg.seed)
    overrides = model_overrides(cfg, tokenizer.vocab_size)
    model = vatt.create_model(cfg.model.name, **overrides)
    loss_fn = VattLoss(temperature=cfg.temperature, nce_weight=cfg.nce_weight, milnce_weight=cfg.milnce_weight)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay
    )
    schedule = warmup_cosine(cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.end_lr / cfg.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer = accelerator.prepare(model, optimizer)
    failures = FailureTracker(max_fail_fraction=cfg.data.max_fail_fraction)
    # The scheduler is stepped by hand (once per optimizer step); both are saved with every state as JSON.
    states = StateManager(
        run_dir, accelerator, keep=cfg.keep_states, custom={"scheduler": scheduler, "failures": failures}
    )
    try:
        start_step = states.resume() if cfg.resume == "auto" else 0
    except StateError as exc:
        sys.exit(f"pretrain.py: {exc}")

    train_set = ConcatDataset(
        [
            ManifestDataset(
                m,
                cfg.preprocess,
                tokenizer,
                train=True,
                decode_threads=cfg.data.decode_threads,
                cache_mb=cfg.data.cache_mb,
            )
            for m in manifests
        ]
    )
    if cfg.data.cache_mb > 0:
        for dataset in train_set.datasets:
            dataset.prefill(num_workers=cpu_threads(0, world), progress=accelerator.is_main_process)
    sampler = StepBatchSampler(
        len(train_set),
        micro_batch,
        seed=cfg.seed,
        rank=accelerator.process_index,
        world_size=world,
        start_step=start_step * cfg.grad_accum,
        max_steps=cfg.max_steps * cfg.grad_accum,
    )
    loader = DataLoader(
        SeededItems(train_set),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        # Its own generator: creating the iterator must not consume the global RNG that DropToken
        # draws from, or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        metrics.rewind(start_step)  # what a killed run logged after its last state is logged again
    export_meta = {"model_name": cfg.model.name, "overrides": overrides, "tokenizer_file": tok_file}

    def evaluate_and_export(step: int) -> dict[str, dict[str, float]] | None:
        result = None
        if accelerator.is_main_process:
            net = accelerator.unwrap_model(model)
            export = save_export(
                run_dir / "export",
                kind="vatt",
                state_dict=net.state_dict(),
                preprocess=cfg.preprocess.to_dict(),
                extra={"step": step},
                **export_meta,
            )
            result = evaluate_retrieval(
                net,
                cfg.preprocess,
                tokenizer,
                val_manifest,
                clips_per_video=cfg.eval_clips_per_video,
                batch_size=cfg.eval_batch_size,
                num_workers=cfg.data.num_workers,
                index_dir=run_dir / "index",
                export_dir=export,
                device=accelerator.device,
            )
            net.train()
            metrics.write({"step": step, **{f"{k}/{m}": v for k, ms in result.items() for m, v in ms.items()}})
        accelerator.wait_for_everyone()
        return result

    model.train()
    step = start_step
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="pretrain", disable=not accelerator.is_main_process)
    window_clips, window_start = 0, time.perf_counter()
    micro, halt = 0, False
    with StopRequest() as stop:
        for batch in loader:
            failures.update(batch, check=False)
            try:
                halt, skip = agree(accelerator, stop, batch_size(batch) == 0, failures)
            except DataFailureError as exc:
                sys.exit(f"pretrain.py: {exc}")
            if skip:
                continue
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            # Padding beyond the longest caption is masked anyway: trimming it saves text-tower compute.
            batch["text_ids"] = batch["text_ids"][..., : max(1, int(batch["text_lengths"].max()))]
            with accelerator.accumulate(model):
                out = model(batch["video"], batch["audio"], batch["text_ids"], batch["text_lengths"])
                losses = loss_fn(
                    **out,
                    text_lengths=batch["text_lengths"],
                    text_mask=batch["text_mask"],
                    audio_mask=batch["audio_mask"],
                )
                accelerator.backward(losses["loss"])
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_clips += batch["video"].shape[0] * world
            micro += 1
            if micro % cfg.grad_accum:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                reduced = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in losses.items()}
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    **reduced,
                    "lr": scheduler.get_last_lr()[0],
                    "clips_per_s": window_clips / elapsed,
                }
                if accelerator.is_main_process:
                    metrics.write(record)
                bar.set_postfix(
                    loss=f"{reduced['loss']:.3f}", lr=f"{record['lr']:.1e}", clips_s=f"{record['clips_per_s']:.0f}"
                )
                window_clips, window_start = 0, time.perf_counter()
            if halt:
                states.save(step)
                log.warning("stopped at step %d; state saved in %s", step, run_dir / "states")
                return
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                states.save(step)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluate_and_export(step)
    bar.close()

    attempted, skipped = failure_totals(accelerator, failures)
    try:
        failures.check(final=True, totals=(attempted, skipped))
    except DataFailureError as exc:
        sys.exit(f"pretrain.py: {exc}")
    if cfg.save_every and (step > start_step or not (run_dir / "metrics_final.json").exists()):
        states.save(step)
    final = evaluate_and_export(step)
    if accelerator.is_main_process:
        metrics.write({"step": step, "skipped_clips": skipped, "attempted_clips": attempted})
        atomic_write_json(run_dir / "metrics_final.json", final)
        plot_curves(metrics.read(), run_dir / "curves.png")
        log.info("skipped clips (bad media): %d of %d", skipped, attempted)
        print(format_table(final))
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
