"""Audio-visual speech recognition training: hybrid CTC/attention on LRS2 or the synthetic speech corpus.

    accelerate launch train_avsr.py [--config configs/avsr/FILE.yaml] [key=value ...]

With no arguments it trains the CPU-sized ``avsr_transformer_tiny`` (audio-visual, with modality
dropout, on characters) on the built-in synthetic speech corpus (:mod:`data.synth.speech`, generated
into ``.cache/`` on first use) and ends with the validation WER of every modality. ``data.root`` points
it at a real LRS2 directory instead; ``configs/avsr/`` holds the recipes. One optimizer step consumes
up to ``data.max_frames`` padded video frames per process and micro-batch (batches are built by a frame
budget with length bucketing, and optionally a curriculum on utterance length).

Front-ends can start from a VATT export (``init.vatt_export``, Pan et al. 2022): the chosen towers
become the front-ends (their model and input size come from the export) and can stay frozen for the
first ``init.freeze_steps`` steps. An audio-visual model can start from trained unimodal ones
(``init.avsr_export``, ``init.video_frontend_from``), as auto_avsr does. The run directory holds the
resolved config, ``metrics.jsonl`` (training losses and ``val_wer``), training states for
``resume=auto``, ``curves.png``, an export (``export/``, what ``python -m eval.lrs2`` loads) and
``metrics_final.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

import avsr
from avsr.frontends.audio import read_state_dict
from avsr.units import LRS2_CHARACTERS
from data.batching import FrameBudgetBatchSampler, LengthCurriculum
from data.collate import DataFailureError, FailureTracker
from data.config import ConfigError, check_paths, check_ranges, get_dotted, parse_config, save_config, to_dict
from data.export import Export, ExportError, read_export, save_export
from data.lrs2 import LRS2Config, LRS2Dataset, LRS2FormatError, SplitEntry, collate_lrs2, read_split
from data.noise import AddNoise, BabbleNoise
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
from data.sampling import SeededItems
from data.schedule import warmup_cosine
from data.synth import speech
from data.tokenizer import Tokenizer, train_tokenizer
from eval.lrs2 import DecodeConfig, make_loader, summarize, transcribe

log = logging.getLogger("train_avsr")

# The init key that takes each stream's front-end from another AVSR export.
FRONTEND_FROM = {"v": "video_frontend_from", "a": "audio_frontend_from"}

# Set from the units and the preprocessing, never by hand.
DERIVED_OVERRIDES = ("vocab_size", "modalities", "fps", "sample_rate")


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


def cpu_preprocess() -> LRS2Config:
    """LRS2 preprocessing with CPU-sized mouth crops (the mouth box resized to 36x36, then 32x32 crops;
    1.5x faster to train than 48 -> 44 here) for the synthetic corpus; the LRS2 recipe uses the standard
    96x96 -> 88x88. ``root`` is always set from ``data.root``."""
    return LRS2Config(root="", resize=36, crop=32)


@dataclass
class ModelConfig:
    name: str = "avsr_transformer_tiny"
    modalities: Literal["a", "v", "av"] = "av"
    overrides: dict[str, Any] = field(default_factory=dict)  # avsr.AvsrConfig fields, e.g. {depth: 2}


@dataclass
class UnitsConfig:
    kind: Literal["characters", "sentencepiece"] = "characters"
    alphabet: str = LRS2_CHARACTERS  # characters: every transcript character must be one of these
    sentencepiece_model: str = ""  # an existing .model (pad 0, unk 1); empty: train one on the transcripts
    vocab_size: int = 1000  # unigram pieces to train (a ceiling: small corpora get fewer)


@dataclass
class InitConfig:
    vatt_export: str = ""  # a VATT export (pretrain.py's run_dir/export) whose towers become front-ends
    frontends: Literal["a", "v", "av"] = "av"  # which front-ends start from it (within model.modalities)
    wav2vec2_weights: str = ""  # torchaudio Wav2Vec2Model state dict (torch.save) for audio_frontend=wav2vec2
    freeze_steps: int = 0  # keep the initialised front-ends frozen for this many steps
    # false: the export's towers as front-ends but with random weights, the baseline of an
    # initialisation comparison (same architecture, same steps)
    load_weights: bool = True
    # Trained AVSR exports (train_avsr.py's run_dir/export; auto_avsr starts audio-visual models from
    # unimodal ones): every weight of avsr_export that fits (AvsrModel.load_avsr_state: the model starts
    # out computing what that export computes), then one front-end from each *_frontend_from. Same units.
    avsr_export: str = ""
    video_frontend_from: str = ""
    audio_frontend_from: str = ""


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw"] = "adamw"
    lr: float = 1e-3
    end_lr: float = 1e-5  # reached at max_steps by the cosine schedule
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.03
    grad_clip: float = 5.0  # 0 disables clipping


@dataclass
class LossConfig:
    ctc_weight: float = 0.1
    label_smoothing: float = 0.1


@dataclass
class EvalConfig:
    every: int = 130  # steps between validations (and exports); 0: only at the end
    method: Literal["greedy", "beam"] = "greedy"
    beam_size: int = 10
    ctc_weight: float = 0.1
    length_bonus: float = 0.0
    modalities: list[str] = field(default_factory=list)  # empty: the model's (and a, v for an av model)
    max_utterances: int = 0  # 0: the whole val split
    max_frames: int = 2000  # padded video frames per eval batch


@dataclass
class TrainAvsrConfig:
    output_dir: str = ""  # empty: a fresh timestamped directory under runs/
    max_steps: int = 650  # the CPU default: about 25 minutes on 2 cores (see configs/avsr/synth_av.yaml)
    seed: int = 0
    resume: Literal["auto", "never"] = "auto"  # auto: continue the run in output_dir (same config)
    overwrite: bool = False  # replace the run already in output_dir
    grad_accum: int = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    sync_batchnorm: bool = True  # batch-norm statistics over all GPU processes (as auto_avsr); not on CPUs
    # torch threads per process on a CPU (1 beside a data worker on 2 cores); 0: the cores shared among processes
    cpu_threads: int = 1
    log_every: int = 10
    save_every: int = 250  # training state; also on SIGTERM / Ctrl-C
    keep_states: int = 2
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: LRS2Config = field(default_factory=cpu_preprocess)
    model: ModelConfig = field(default_factory=ModelConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Inputs named by the config, checked to exist before any work.
INPUT_FILES = ["units.sentencepiece_model", "init.wav2vec2_weights"]
INPUT_DIRS = [
    "data.root",
    "data.noise.babble_dir",
    "init.vatt_export",
    "init.avsr_export",
    "init.video_frontend_from",
    "init.audio_frontend_from",
]
# Every count and fraction of the config, checked before any work.
RANGES = {
    "max_steps": (">=", 1),
    "grad_accum": (">=", 1),
    "cpu_threads": (">=", 0),
    "log_every": (">=", 1),
    "save_every": (">=", 0),
    "keep_states": (">=", 1),
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
    "units.vocab_size": (">=", 8),
    "init.freeze_steps": (">=", 0),
    "optim.lr": (">", 0),
    "optim.end_lr": (">=", 0),
    "optim.warmup_steps": (">=", 0),
    "optim.betas": ("in", 0, 0.999999),
    "optim.weight_decay": (">=", 0),
    "optim.grad_clip": (">=", 0),
    "loss.ctc_weight": ("in", 0, 1),
    "loss.label_smoothing": ("in", 0, 0.999),
    "eval.every": (">=", 0),
    "eval.beam_size": (">=", 1),
    "eval.ctc_weight": ("in", 0, 1),
    "eval.max_utterances": (">=", 0),
    "eval.max_frames": (">=", 1),
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


def check_config(cfg: TrainAvsrConfig) -> None:
    """What the dataclass types cannot say, before any work; raises :class:`ConfigError` naming the key."""
    check_ranges(cfg, RANGES)
    for key in ("data.max_batch_size", "data.max_length", "data.curriculum.end"):
        value = get_dotted(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"config key {key!r}: {value!r} is out of range; expected null or >= 1")
    if cfg.preprocess.crop > cfg.preprocess.resize:
        raise ConfigError(f"config key 'preprocess.crop': {cfg.preprocess.crop} is larger than preprocess.resize")
    left, top, right, bottom = cfg.preprocess.mouth_box
    if right <= left or bottom <= top:
        raise ConfigError(f"config key 'preprocess.mouth_box': {list(cfg.preprocess.mouth_box)} is empty")
    if cfg.data.synth.val_speakers + cfg.data.synth.test_speakers >= cfg.data.synth.speakers:
        raise ConfigError("config key 'data.synth.speakers': fewer than val_speakers + test_speakers + 1")
    fields = {f.name for f in dataclasses.fields(avsr.AvsrConfig)}
    for key in cfg.model.overrides:
        if key not in fields:
            raise ConfigError(f"unknown config key 'model.overrides.{key}'; valid keys: {', '.join(sorted(fields))}")
        if key in DERIVED_OVERRIDES:
            raise ConfigError(
                f"config key 'model.overrides.{key}' is derived (from units, model.modalities and preprocess); "
                "set it there"
            )
    for m in cfg.eval.modalities:
        if m not in ("a", "v", "av") or not set(m) <= set(cfg.model.modalities):
            raise ConfigError(
                f"config key 'eval.modalities': {m!r} is not one of the model's streams (model.modalities="
                f"{cfg.model.modalities!r})"
            )
    init = cfg.init
    if init.vatt_export and not set(init.frontends) & set(cfg.model.modalities):
        raise ConfigError(f"init.frontends={init.frontends!r} names no stream of model.modalities")
    if init.wav2vec2_weights:
        if "a" not in cfg.model.modalities or cfg.model.overrides.get("audio_frontend") != "wav2vec2":
            raise ConfigError("init.wav2vec2_weights needs model.overrides.audio_frontend=wav2vec2 and an audio stream")
        if not Path(init.wav2vec2_weights).is_file():
            raise ConfigError(f"init.wav2vec2_weights {init.wav2vec2_weights!r} not found")
    for m, key in FRONTEND_FROM.items():
        if getattr(init, key) and m not in cfg.model.modalities:
            raise ConfigError(f"init.{key} is set but model.modalities={cfg.model.modalities!r} has no such stream")
        sources = [k for k in frontend_sources(init, m) if m in cfg.model.modalities]
        if len(sources) > 1:
            raise ConfigError(f"{' and '.join('init.' + k for k in sources)} both initialise the {m!r} front-end")
    if init.freeze_steps > 0 and init.vatt_export and not init.load_weights and not init.wav2vec2_weights:
        raise ConfigError("init.freeze_steps would freeze random front-ends: init.load_weights is false")
    if init.freeze_steps > 0 and not (init.avsr_export or any(frontend_sources(init, m) for m in "av")):
        raise ConfigError(
            "init.freeze_steps needs pretrained front-ends (init.vatt_export, init.wav2vec2_weights, "
            "init.avsr_export or init.*_frontend_from)"
        )
    if cfg.preprocess.root and cfg.preprocess.root != cfg.data.root:
        raise ConfigError("config key 'preprocess.root' is set from data.root; set data.root instead")
    if cfg.units.kind == "characters" and len(set(cfg.units.alphabet)) != len(cfg.units.alphabet):
        raise ConfigError("units.alphabet repeats a character")
    if not cfg.data.train_splits:
        raise ConfigError("data.train_splits is empty")


def corpus_root(cfg: TrainAvsrConfig, progress: bool) -> str:
    """``data.root``, or the synthetic corpus (generated on first use)."""
    if cfg.data.root:
        return cfg.data.root
    s = cfg.data.synth
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


def training_noise(cfg: TrainAvsrConfig, root: str) -> AddNoise | None:
    """The training audio transform of ``data.noise`` (None when off); babble never uses val/test clips."""
    n = cfg.data.noise
    if n.kind == "none":
        return None
    babble = None
    if n.kind == "babble":
        if not n.babble_dir:
            raise ConfigError("data.noise.kind=babble needs data.noise.babble_dir (a folder of speech)")
        exclude = [e.id for split in ("val", "test") for e in _split_or_empty(root, split)]
        babble = BabbleNoise.from_folder(
            n.babble_dir, sample_rate=cfg.preprocess.sample_rate, talkers=n.talkers, exclude=exclude, seed=cfg.seed
        )
    return AddNoise(n.kind, tuple(n.snr_db), prob=n.prob, babble=babble, seed=cfg.seed)


def _split_or_empty(root: str, split: str) -> list[SplitEntry]:
    try:
        return read_split(root, split)
    except FileNotFoundError:
        return []


def prepare_units(
    cfg: TrainAvsrConfig, texts: list[str], run_dir: Path
) -> tuple[avsr.TokenSet, Callable[[str], list[int]], Path | None]:
    """Output units, the text -> target ids function and the tokenizer file to export (None for characters)."""
    u = cfg.units
    if u.kind == "characters":
        bad = sorted({ch for t in texts for ch in t} - set(u.alphabet))
        if bad:
            raise ConfigError(
                f"the transcripts use characters outside units.alphabet: {''.join(bad)!r}; extend units.alphabet "
                "or use units.kind=sentencepiece"
            )
        tokens = avsr.TokenSet.characters(u.alphabet)
        return tokens, tokens.encode, None
    model_file = Path(u.sentencepiece_model) if u.sentencepiece_model else run_dir / "units.model"
    if not u.sentencepiece_model and not model_file.exists():
        train_tokenizer(texts, u.vocab_size, model_file, model_type="unigram", lowercase=False)
    tokenizer = Tokenizer(model_file)
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    return avsr.TokenSet.from_sentencepiece(pieces), tokenizer.encode, model_file


def frontend_sources(init: InitConfig, m: str) -> list[str]:
    """The ``init`` keys that give the ``"v"`` or ``"a"`` front-end its weights (avsr_export: if it has m)."""
    sources = ["vatt_export"] if init.vatt_export and m in init.frontends else []
    if m == "a" and init.wav2vec2_weights:
        sources.append("wav2vec2_weights")
    if getattr(init, FRONTEND_FROM[m]):
        sources.append(FRONTEND_FROM[m])
    return sources


def model_overrides(cfg: TrainAvsrConfig, tokens: avsr.TokenSet, vatt_export: Export | None) -> dict[str, Any]:
    """Sizes come from the units and the preprocessing; VATT front-ends from the export, never typed twice."""
    pp = cfg.preprocess
    overrides: dict[str, Any] = {
        "vocab_size": tokens.vocab_size,
        "modalities": cfg.model.modalities,
        "fps": pp.fps,
        "sample_rate": pp.sample_rate,
        "video_mean": pp.mean,
        "video_std": pp.std,
    }
    if vatt_export is not None:
        towers = set(cfg.init.frontends) & set(cfg.model.modalities)
        if "v" in towers:
            overrides["video_frontend"] = "vatt"
        if "a" in towers:
            overrides["audio_frontend"] = "vatt"
        overrides.update(
            vatt_model=vatt_export.model_name,
            vatt_overrides=vatt_export.overrides,
            vatt_image_size=int(vatt_export.preprocess["image_size"]),
            vatt_sample_rate=int(vatt_export.preprocess["sample_rate"]),
        )
    overrides.update(cfg.model.overrides)
    return overrides


def read_avsr_inits(init: InitConfig) -> dict[str, Export]:
    """The AVSR exports named by ``init``, by key."""
    keys = ("avsr_export", *FRONTEND_FROM.values())
    return {k: read_export(getattr(init, k), kind="avsr") for k in keys if getattr(init, k)}


def check_units(avsr_inits: dict[str, Export], tokens: avsr.TokenSet) -> None:
    """Output layers and decoder embeddings only carry over between models of the same units."""
    for key, export in avsr_inits.items():
        if "tokens" not in export.extra or avsr.TokenSet.from_dict(export.extra["tokens"]) != tokens:
            raise ConfigError(f"init.{key}: that export's units differ from this run's ({len(tokens.units)} units)")


def init_frontends(
    model: avsr.AvsrModel, cfg: TrainAvsrConfig, vatt_export: Export | None, avsr_inits: dict[str, Export]
) -> str:
    """Load pretrained weights (AVSR exports first); returns the streams whose front-ends were initialised."""
    done = ""
    if "avsr_export" in avsr_inits:
        left = model.load_avsr_state(avsr_inits["avsr_export"].state_dict)
        theirs = avsr_inits["avsr_export"].overrides["modalities"]
        done += "".join(m for m in "va" if m in theirs and m in cfg.model.modalities)
        log.info("started from the AVSR export %s (%d entries left as built)", cfg.init.avsr_export, len(left))
    for m, key in FRONTEND_FROM.items():
        if key in avsr_inits:
            prefix = "video_frontend." if m == "v" else "audio_frontend."
            model.load_frontend_state(m, avsr_inits[key].state_dict, prefix=prefix)
            done += m
            log.info("%s front-end initialised from the AVSR export %s", m, getattr(cfg.init, key))
    if vatt_export is not None and not cfg.init.load_weights:
        log.info("front-ends built as the towers of %s, weights left random", cfg.init.vatt_export)
    elif vatt_export is not None:
        towers = "".join(m for m in "va" if m in cfg.init.frontends and m in cfg.model.modalities)
        for m in towers:
            model.load_frontend_state(m, vatt_export.state_dict)
        done += towers
        log.info("front-ends %r initialised from the VATT export %s", towers, cfg.init.vatt_export)
    if cfg.init.wav2vec2_weights:
        model.load_frontend_state("a", read_state_dict(cfg.init.wav2vec2_weights))
        done += "a"
        log.info("audio front-end initialised from %s", cfg.init.wav2vec2_weights)
    return "".join(m for m in "va" if m in done)


def build_optimizer(o: OptimConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW over every parameter (frozen front-ends simply get no gradient while frozen)."""
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def lr_schedule(cfg: TrainAvsrConfig) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` per step: linear warmup, then cosine to ``end_lr`` or constant."""
    o = cfg.optim
    if o.schedule == "constant":
        return lambda step: min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    return warmup_cosine(o.warmup_steps, cfg.max_steps, o.end_lr / o.lr)


def pad_targets(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ids (B, L) zero-padded and their lengths (B,)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.int64)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x, dtype=torch.int64)
    return targets, lengths


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = parse_config(TrainAvsrConfig, sys.argv[1:] if argv is None else argv)
        check_config(cfg)
        check_paths(cfg, files=INPUT_FILES, dirs=INPUT_DIRS)
        vatt_export = read_export(cfg.init.vatt_export, kind="vatt") if cfg.init.vatt_export else None
        avsr_inits = read_avsr_inits(cfg.init)
    except (ConfigError, ExportError) as exc:
        sys.exit(f"train_avsr.py: {exc}")

    # Frozen front-ends produce no gradients for a while; DDP has to be told.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.init.freeze_steps > 0)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=[ddp]
    )
    setup_logging(main_process=accelerator.is_main_process)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.cpu_threads, accelerator.num_processes))
    world = accelerator.num_processes
    try:
        with accelerator.main_process_first():
            root = corpus_root(cfg, progress=accelerator.is_main_process)
        cfg.data.root = root  # the resolved config names the corpus it used
        cfg.preprocess = dataclasses.replace(cfg.preprocess, root=root)
        run_dir = open_shared_run_dir(
            accelerator, cfg.output_dir, to_dict(cfg), resume=cfg.resume, overwrite=cfg.overwrite, prefix="train_avsr"
        )
    except (RunDirError, FileNotFoundError, ValueError) as exc:
        sys.exit(f"train_avsr.py: {str(exc).splitlines()[0]}")

    try:
        with accelerator.main_process_first():
            cfg.preprocess = dataclasses.replace(
                cfg.preprocess, length_cache=cfg.preprocess.length_cache or str(run_dir / "lengths.json")
            )
            noise = training_noise(cfg, root)
            parts = [
                LRS2Dataset(
                    cfg.preprocess,
                    split,
                    train=True,
                    audio_transform=noise,
                    load_video="v" in cfg.model.modalities,
                    load_audio="a" in cfg.model.modalities,
                )
                for split in cfg.data.train_splits
            ]
            lengths = [n for p in parts for n in p.lengths()]
            texts = [t for p in parts for t in p.texts()]
            tokens, encode, units_file = prepare_units(cfg, texts, run_dir)
            check_units(avsr_inits, tokens)
            eval_modalities = cfg.eval.modalities or (
                ["av", "a", "v"] if cfg.model.modalities == "av" else [cfg.model.modalities]
            )
            val_set = LRS2Dataset(
                cfg.preprocess,
                cfg.data.val_split,
                train=False,
                load_video=any("v" in m for m in eval_modalities),
                load_audio=any("a" in m for m in eval_modalities),
            )
            val_set.lengths()
            if not lengths:
                raise ValueError(f"the training splits {cfg.data.train_splits} of {root} list no utterances")
            if not len(val_set):
                raise ValueError(f"the validation split {cfg.data.val_split!r} of {root} lists no utterances")
    except (ConfigError, FileNotFoundError, LRS2FormatError, ValueError) as exc:
        sys.exit(f"train_avsr.py: {str(exc).splitlines()[0]}")
    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.yaml")
    log.info(
        "%d training utterances (%s), %d validation; %d units", len(lengths), root, len(val_set), len(tokens.units)
    )

    set_seed(cfg.seed)
    overrides = model_overrides(cfg, tokens, vatt_export)
    try:
        model = avsr.create_model(cfg.model.name, **overrides)
        pretrained = init_frontends(model, cfg, vatt_export, avsr_inits)
    except (KeyError, ValueError, RuntimeError) as exc:
        sys.exit(f"train_avsr.py: {str(exc).splitlines()[0]}")
    if cfg.sync_batchnorm and world > 1 and accelerator.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and state-dict keys
    loss_fn = avsr.HybridLoss(ctc_weight=cfg.loss.ctc_weight, label_smoothing=cfg.loss.label_smoothing)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg))
    model, optimizer = accelerator.prepare(model, optimizer)
    failures = FailureTracker(max_fail_fraction=cfg.data.max_fail_fraction)
    # The scheduler is stepped by hand (once per optimizer step); both are saved with every state as JSON.
    states = StateManager(
        run_dir, accelerator, keep=cfg.keep_states, custom={"scheduler": scheduler, "failures": failures}
    )
    try:
        start_step = states.resume() if cfg.resume == "auto" else 0
    except StateError as exc:
        sys.exit(f"train_avsr.py: {exc}")
    net: avsr.AvsrModel = accelerator.unwrap_model(model)
    frozen_params: list[torch.nn.Parameter] = []
    if pretrained and start_step < cfg.init.freeze_steps:
        # After prepare(): DDP must see every parameter as trainable when it is built.
        net.set_frontend_frozen(True, pretrained)
        frozen_params = [
            p for m in pretrained for p in (net.video_frontend if m == "v" else net.audio_frontend).parameters()
        ]
        log.info("front-ends %r frozen until step %d", pretrained, cfg.init.freeze_steps)

    c = cfg.data.curriculum
    curriculum = LengthCurriculum(c.start, c.end, c.ramp, c.unit) if c.start > 0 else None
    sampler = FrameBudgetBatchSampler(
        lengths,
        cfg.data.max_frames,
        max_batch_size=cfg.data.max_batch_size,
        seed=cfg.seed,
        pool_size=cfg.data.pool_size,
        curriculum=curriculum,
        max_length=cfg.data.max_length,
        rank=accelerator.process_index,
        world_size=world,
        start_step=start_step * cfg.grad_accum,
        max_steps=cfg.max_steps * cfg.grad_accum,
        with_seeds=True,
    )
    loader = DataLoader(
        SeededItems(ConcatDataset(parts)),
        batch_sampler=sampler,
        collate_fn=collate_lrs2,
        num_workers=cfg.data.num_workers,
        persistent_workers=False,
        # Its own generator: creating the iterator must not draw from the global RNG (dropout, modality
        # dropout), or a resumed run would see other random numbers than an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_loader = make_loader(val_set, cfg.eval.max_frames, cfg.data.num_workers, cfg.eval.max_utterances)
    decode = DecodeConfig(
        method=cfg.eval.method,
        beam_size=cfg.eval.beam_size,
        ctc_weight=cfg.eval.ctc_weight,
        length_bonus=cfg.eval.length_bonus,
        threads=cfg.cpu_threads,
    )
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    if accelerator.is_main_process:
        metrics.rewind(start_step)  # what a killed run logged after its last state is logged again

    def evaluate_and_export(step: int) -> dict[str, Any] | None:
        result = None
        if accelerator.is_main_process:
            save_export(
                run_dir / "export",
                kind="avsr",
                model_name=net.model_name,
                overrides=net.overrides,
                state_dict=net.state_dict(),
                preprocess=cfg.preprocess.preprocess(),
                tokenizer_file=units_file,
                extra={"step": step, "tokens": tokens.to_dict(), "train_splits": cfg.data.train_splits},
            )
            result = {"step": step}
            for i, m in enumerate(eval_modalities):
                records, timing = transcribe(net, tokens, val_loader, m, decode, accelerator.device)
                summary = summarize(records, timing)
                if i == 0:
                    result.update(val_wer=summary["wer"], val_cer=summary["cer"])
                result.update({f"val_wer_{m}": summary["wer"], f"val_cer_{m}": summary["cer"]})
            result["val_utterances"] = summary["utterances"]
            net.train()
            metrics.write(result)
            log.info("step %d: %s", step, "  ".join(f"{k} {v:.2f}" for k, v in result.items() if k.startswith("val_w")))
        accelerator.wait_for_everyone()
        return result

    model.train()
    step = start_step
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train_avsr", disable=not accelerator.is_main_process)
    window_utts = window_frames = window_steps = 0
    window_start = time.perf_counter()
    micro, halt = 0, False
    with StopRequest() as stop:
        for batch in loader:
            failures.update(batch, check=False)
            try:
                halt, skip = agree(accelerator, stop, not batch["ids"], failures)
            except DataFailureError as exc:
                sys.exit(f"train_avsr.py: {exc}")
            if skip:
                continue
            targets, target_lengths = pad_targets([encode(t) for t in batch["text"]])
            inputs = {k: v.to(accelerator.device) for k, v in batch.items() if torch.is_tensor(v)}
            targets, target_lengths = targets.to(accelerator.device), target_lengths.to(accelerator.device)
            with accelerator.accumulate(model):
                out = model(**inputs, targets=targets, target_lengths=target_lengths)
                losses = loss_fn(**out, targets=targets, target_lengths=target_lengths)
                accelerator.backward(losses["loss"])
                for p in frozen_params:  # no decay or momentum step on frozen weights, whatever DDP left
                    p.grad = None
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_utts += len(batch["ids"]) * world
            window_frames += int(batch["video_lengths"].sum()) * world
            micro += 1
            if micro % cfg.grad_accum:
                continue
            scheduler.step()
            step += 1
            window_steps += 1
            bar.update(1)
            if frozen_params and step >= cfg.init.freeze_steps:
                net.set_frontend_frozen(False, pretrained)
                frozen_params = []
                log.info("step %d: front-ends %r unfrozen", step, pretrained)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                reduced = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in losses.items()}
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    **reduced,
                    "lr": scheduler.get_last_lr()[0],
                    "steps_per_s": window_steps / elapsed,
                    "utts_per_s": window_utts / elapsed,
                    "frames_per_s": window_frames / elapsed,
                }
                if accelerator.is_main_process:
                    metrics.write(record)
                bar.set_postfix(
                    loss=f"{reduced['loss']:.3f}", lr=f"{record['lr']:.1e}", utt_s=f"{record['utts_per_s']:.1f}"
                )
                window_utts = window_frames = window_steps = 0
                window_start = time.perf_counter()
            if halt:
                states.save(step)
                log.warning("stopped at step %d; state saved in %s", step, run_dir / "states")
                return
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
                states.save(step)
            if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.max_steps:
                evaluate_and_export(step)
    bar.close()

    attempted, skipped = failure_totals(accelerator, failures)
    try:
        failures.check(final=True, totals=(attempted, skipped))
    except DataFailureError as exc:
        sys.exit(f"train_avsr.py: {exc}")
    if cfg.save_every and (step > start_step or not (run_dir / "metrics_final.json").exists()):
        states.save(step)
    final = evaluate_and_export(step)
    if accelerator.is_main_process:
        metrics.write({"step": step, "skipped_utterances": skipped, "attempted_utterances": attempted})
        atomic_write_json(run_dir / "metrics_final.json", final)
        plot_curves(metrics.read(), run_dir / "curves.png")
        log.info("skipped utterances (bad media): %d of %d", skipped, attempted)
        wers = "  ".join(f"{m}: WER {final[f'val_wer_{m}']:.2f}%" for m in eval_modalities)  # type: ignore[index]
        print(f"validation ({cfg.data.val_split}, {cfg.eval.method}) at step {step}: {wers}")
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
