"""Training utterances for speech recognition: the data section of a run, its corpus and its loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import ConcatDataset, DataLoader

from data.batching import FrameBudgetBatchSampler, LengthCurriculum
from data.lrs2 import LRS2Dataset, SplitEntry, collate_lrs2, read_split
from data.noise import AddNoise, BabbleNoise
from data.sampling import SeededItems
from data.schema import ConfigError, check_ranges, get_dotted
from data.synth import speech

# Ranges of the data.* and preprocess.* keys of a speech-recognition run, checked before any work.
DATA_RANGES = {
    "data.max_frames": (">=", 1),
    "data.pool_size": (">=", 1),
    "data.num_workers": (">=", 0),
    "data.max_fail_fraction": ("in", 0, 1),
    "data.curriculum.start": (">=", 0),
    "data.curriculum.ramp": (">=", 1),
    "data.noise.prob": ("in", 0, 1),
    "data.noise.talkers": (">=", 1),
    "data.synth.speakers": (">=", 1),
    "data.synth.utterances": (">=", 1),
    "data.synth.val_speakers": (">=", 1),
    "data.synth.test_speakers": (">=", 0),
    "data.synth.workers": (">=", 1),
    "preprocess.fps": (">", 0),
    "preprocess.sample_rate": (">=", 1),
    "preprocess.mouth_box": (">=", 0),
    "preprocess.landmark_smooth": (">=", 1),
    "preprocess.resize": (">=", 1),
    "preprocess.crop": (">=", 1),
    "preprocess.std": (">", 0),
    "preprocess.hflip_prob": ("in", 0, 1),
    "preprocess.decode_threads": (">=", 0),
    "preprocess.max_seconds": (">", 0),
}


@dataclass
class SynthConfig:
    """The built-in synthetic corpus, used when ``data.root`` is empty (written to <dir>/speech-...)."""

    dir: str = ".cache"
    speakers: int = 24  # of which val_speakers and test_speakers are held out
    utterances: int = 40  # per speaker
    val_speakers: int = 2
    test_speakers: int = 2
    grammar: Literal["grid", "extended"] = "grid"
    seed: int = 0
    workers: int = 2


@dataclass
class CurriculumConfig:
    """Longest admitted utterance (video frames) grows from ``start`` to ``end`` over ``ramp`` epochs or
    sampler steps; ``start = 0`` disables the curriculum, ``end = null`` grows to the longest utterance."""

    start: int = 0
    end: int | None = None
    ramp: int = 1
    unit: Literal["epoch", "step"] = "epoch"


@dataclass
class NoiseConfig:
    """Additive noise on the training audio (data.noise): per utterance with probability ``prob``, at an
    SNR drawn uniformly from ``snr_db``; babble needs a folder of speech (the val split is excluded)."""

    kind: Literal["none", "white", "babble"] = "none"
    babble_dir: str = ""
    snr_db: tuple[float, float] = (0.0, 20.0)
    prob: float = 0.5
    talkers: int = 6


@dataclass
class DataConfig:
    root: str = ""  # an LRS2 directory; empty: the built-in synthetic corpus (see synth)
    train_splits: list[str] = field(default_factory=lambda: ["train"])  # e.g. [pretrain, train]
    val_split: str = "val"
    max_frames: int = 600  # padded video frames per process and micro-batch
    max_batch_size: int | None = None
    max_length: int | None = None  # drop training utterances longer than this (frames)
    pool_size: int = 1000  # length bucketing: items are sorted by length within pools of this size
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    num_workers: int = 1
    max_fail_fraction: float = 0.01
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)


def corpus_root(d: DataConfig, progress: bool) -> str:
    """``data.root``, or the synthetic corpus (generated on first use)."""
    if d.root:
        return d.root
    s = d.synth
    out = Path(s.dir) / f"speech-{s.speakers}x{s.utterances}-v{s.val_speakers}t{s.test_speakers}-{s.grammar}-s{s.seed}"
    corpus = speech.SpeechCorpusConfig(
        out=str(out),
        speakers=s.speakers,
        utterances=s.utterances,
        seed=s.seed,
        val_speakers=s.val_speakers,
        test_speakers=s.test_speakers,
        grammar=s.grammar,
        workers=s.workers,
    )
    return str(speech.generate(corpus, progress=progress))


def training_noise(d: DataConfig, sample_rate: int, root: str, seed: int) -> AddNoise | None:
    """The training audio transform of ``data.noise`` (None when off); babble never uses val/test clips."""
    n = d.noise
    if n.kind == "none":
        return None
    babble = None
    if n.kind == "babble":
        if not n.babble_dir:
            raise ValueError("data.noise.kind=babble needs data.noise.babble_dir (a folder of speech)")
        exclude = [e.id for split in ("val", "test") for e in _split_or_empty(root, split)]
        babble = BabbleNoise.from_folder(
            n.babble_dir, sample_rate=sample_rate, talkers=n.talkers, exclude=exclude, seed=seed
        )
    return AddNoise(n.kind, tuple(n.snr_db), prob=n.prob, babble=babble, seed=seed)


def _split_or_empty(root: str, split: str) -> list[SplitEntry]:
    try:
        return read_split(root, split)
    except FileNotFoundError:
        return []


def utterance_loader(
    parts: list[LRS2Dataset],
    lengths: list[int],
    d: DataConfig,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    max_steps: int,
) -> DataLoader:
    """Training batches of utterances by a frame budget with length bucketing (and the curriculum), this
    process's share, from ``start_step`` (micro-batches) on."""
    c = d.curriculum
    curriculum = LengthCurriculum(c.start, c.end, c.ramp, c.unit) if c.start > 0 else None
    sampler = FrameBudgetBatchSampler(
        lengths, d.max_frames, max_batch_size=d.max_batch_size, seed=seed, pool_size=d.pool_size,
        curriculum=curriculum, max_length=d.max_length, rank=rank, world_size=world_size,
        start_step=start_step, max_steps=max_steps, with_seeds=True,
    )  # fmt: skip
    # Its own generator: creating the iterator must not draw from the global RNG (dropout, modality
    # dropout), or a resumed run would see other random numbers than an uninterrupted one.
    return DataLoader(
        SeededItems(ConcatDataset(parts)),
        batch_sampler=sampler,
        collate_fn=collate_lrs2,
        num_workers=d.num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def check_data(d: DataConfig, preprocess: Any) -> None:
    """The ``data`` and ``preprocess`` sections beyond their types; :class:`ConfigError` names the key."""
    sections = {"data": d, "preprocess": preprocess}
    check_ranges(sections, DATA_RANGES)
    for key in ("data.max_batch_size", "data.max_length", "data.curriculum.end"):
        value = get_dotted(sections, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; expected null or >= 1")
    if preprocess.crop > preprocess.resize:
        raise ConfigError(f"config key 'preprocess.crop': {preprocess.crop} is larger than preprocess.resize")
    left, top, right, bottom = preprocess.mouth_box
    if right <= left or bottom <= top:
        raise ConfigError(f"config key 'preprocess.mouth_box': {list(preprocess.mouth_box)} is empty")
    if d.synth.val_speakers + d.synth.test_speakers >= d.synth.speakers:
        raise ConfigError(
            "config keys 'data.synth.speakers', 'data.synth.val_speakers' and 'data.synth.test_speakers': "
            f"{d.synth.speakers} leave none for training after {d.synth.val_speakers} + {d.synth.test_speakers}"
        )
