"""Training clips for contrastive pretraining: the data section of a run, its manifests, tokenizer and loader."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from data.collate import collate
from data.manifest import ManifestDataset, ManifestEntry, read_manifest
from data.sampling import GroupedStepBatchSampler, SeededItems, StepBatchSampler
from data.synth import shapes
from data.tokenizer import Tokenizer, train_tokenizer
from data.transforms import PreprocessConfig


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
    # 0: batches drawn from all training videos. N: each batch from N groups of videos, a group being the
    # videos of one folder (in LRS2's layout, one programme; in the speech corpus, one speaker). Clips of
    # one speaker share a face and a voice, so with few speakers in a batch the video-audio NCE cannot be
    # won by recognising who speaks and has to match what is said.
    groups_per_batch: int = 0


def read_manifests(d: DataConfig, seed: int) -> tuple[list[list[ManifestEntry]], str]:
    """Training manifests (read, so a bad line stops the run before any work) and the val manifest path.

    With no manifests configured, the built-in corpus (generated on first use).
    """
    train_paths, val = list(d.train_manifests), d.val_manifest
    if not train_paths:
        corpus = shapes.generate(
            Path(d.synth_dir) / f"shapes-{d.synth_train}-{d.synth_val}", d.synth_train, d.synth_val
        )
        train_paths, val = [str(corpus / "train.jsonl")], val or str(corpus / "val.jsonl")
    manifests = [read_manifest(p) for p in train_paths]
    read_manifest(val)
    if d.shuffle_captions:
        manifests = [shuffle_captions(m, seed) for m in manifests]
    return manifests, val


def prepare_tokenizer(d: DataConfig, manifests: list[list[ManifestEntry]], run_dir: Path) -> Path:
    """The configured SentencePiece model, or one trained on the training captions into the run directory."""
    tok = Path(d.tokenizer) if d.tokenizer else run_dir / "tokenizer.model"
    if not d.tokenizer and not tok.exists():
        train_tokenizer([e for m in manifests for e in m], d.vocab_size, tok)
    return tok


def shuffle_captions(entries: list[ManifestEntry], seed: int) -> list[ManifestEntry]:
    """Control run: captions permuted across the videos (a retrieval score then has to fall to chance)."""
    perm = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed)).tolist()
    return [dataclasses.replace(e, captions=entries[j].captions) for e, j in zip(entries, perm)]


def clip_loader(
    manifests: list[list[ManifestEntry]],
    preprocess: PreprocessConfig,
    tokenizer: Tokenizer,
    d: DataConfig,
    micro_batch: int,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    max_steps: int,
    prefill_workers: int = 0,
    progress: bool = True,
) -> DataLoader:
    """Random clips of the training videos, ``micro_batch`` per step over all processes (this process's
    share), from ``start_step`` (micro-batches) on. Clips that fit in ``d.cache_mb`` are decoded first,
    by ``prefill_workers`` processes."""
    datasets = [
        ManifestDataset(m, preprocess, tokenizer, decode_threads=d.decode_threads, cache_mb=d.cache_mb)
        for m in manifests
    ]
    if d.cache_mb > 0:
        for dataset in datasets:
            dataset.prefill(num_workers=prefill_workers, progress=progress)
    train_set = ConcatDataset(datasets)
    steps = {"seed": seed, "rank": rank, "world_size": world_size, "start_step": start_step, "max_steps": max_steps}
    if d.groups_per_batch:
        folders = [str(Path(e.media).parent) for m in manifests for e in m]
        sampler: StepBatchSampler = GroupedStepBatchSampler(folders, micro_batch, d.groups_per_batch, **steps)
    else:
        sampler = StepBatchSampler(len(train_set), micro_batch, **steps)
    # The loader's own generator: creating its iterator must not consume the global RNG that DropToken
    # draws from, or a resumed run would drift from an uninterrupted one.
    return DataLoader(
        SeededItems(train_set),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=d.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
