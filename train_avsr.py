"""Audio-visual speech recognition training: hybrid CTC/attention on LRS2 or the synthetic speech corpus.

    accelerate launch train_avsr.py [--config configs/avsr/FILE.yaml] [key=value ...]

With no arguments it trains the CPU-sized ``avsr_transformer_tiny`` (audio-visual, with modality
dropout, on characters) on the built-in synthetic speech corpus (generated into ``.cache/`` on first
use) and ends with the validation WER of every modality; ``data.root`` points it at a real LRS2
directory. A step consumes up to ``data.max_frames`` padded video frames per process and micro-batch
(a frame budget with length bucketing). Front-ends can start from a VATT export's towers or from
trained AVSR exports (``init.*``, :mod:`avsr.init`). The run directory holds what every run's does
(train/run_dir.py) and an export that ``python -m eval.lrs2`` loads.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate.utils import DistributedDataParallelKwargs, set_seed

import avsr
import avsr.init
from avsr.init import FRONTEND_FROM, FrozenFrontends, InitConfig, InitError
from avsr.units import LRS2_CHARACTERS, pad_targets
from data.lrs2 import LRS2Config, LRS2Dataset, LRS2FormatError
from data.schema import ConfigError, check_ranges, to_dict
from data.tokenizer import Tokenizer, train_tokenizer
from data.utterances import DATA_RANGES, DataConfig, check_data, corpus_root, training_noise, utterance_loader
from eval.lrs2 import DecodeConfig, make_loader, validate
from train.config import RUN_RANGES, RunConfig, check_paths, parse_config, save_config
from train.export import Export, ExportError, read_export, save_export
from train.loop import Hooks, Trainer, launch
from train.optim import OPTIM_RANGES, OptimConfig, build_optimizer, build_scheduler

log = logging.getLogger("train_avsr")

# Set from the units and the preprocessing, never by hand.
DERIVED_OVERRIDES = ("vocab_size", "modalities", "fps", "sample_rate")


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
class TrainAvsrConfig(RunConfig):
    max_steps: int = 650  # the CPU default on the synthetic corpus (docs/results.md)
    # torch threads per process on a CPU (1 beside a data worker on 2 cores); 0: the cores shared among processes
    cpu_threads: int = 1
    save_every: int = 250
    sync_batchnorm: bool = True  # batch-norm statistics over all GPU processes (as auto_avsr); not on CPUs
    data: DataConfig = field(default_factory=DataConfig)
    # CPU-sized mouth crops (the box resized to 36x36, 32x32 crops); the LRS2 recipe uses 96 -> 88
    preprocess: LRS2Config = field(default_factory=lambda: LRS2Config(root="", resize=36, crop=32))
    model: ModelConfig = field(default_factory=ModelConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(betas=(0.9, 0.98), weight_decay=0.03, grad_clip=5.0))
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Inputs named by the config, checked to exist before any work.
INPUT_FILES = ["units.sentencepiece_model", "init.wav2vec2_weights"]
INPUT_DIRS = ["data.root", "data.noise.babble_dir", *(f"init.{k}" for k in ("vatt_export", "avsr_export", *FRONTEND_FROM.values()))]  # noqa: E501  # fmt: skip

# Every count and fraction of the config, checked before any work.
RANGES = {
    **RUN_RANGES,
    **OPTIM_RANGES,
    "units.vocab_size": (">=", 8),
    "init.freeze_steps": (">=", 0),
    "loss.ctc_weight": ("in", 0, 1),
    "loss.label_smoothing": ("in", 0, 0.999),
    "eval.every": (">=", 0),
    "eval.beam_size": (">=", 1),
    "eval.ctc_weight": ("in", 0, 1),
    "eval.max_utterances": (">=", 0),
    "eval.max_frames": (">=", 1),
    **DATA_RANGES,
}


def check_config(cfg: TrainAvsrConfig) -> None:
    """What the dataclass types cannot say, before any work; raises :class:`ConfigError` naming the key."""
    check_ranges(cfg, RANGES)
    check_data(cfg.data, cfg.preprocess)
    fields = {f.name for f in dataclasses.fields(avsr.AvsrConfig)} - set(DERIVED_OVERRIDES)
    for key in set(cfg.model.overrides) - fields:
        raise ConfigError(
            f"config key 'model.overrides.{key}' is unknown or derived; valid: {', '.join(sorted(fields))}"
        )
    for m in cfg.eval.modalities:
        if m not in ("a", "v", "av") or not set(m) <= set(cfg.model.modalities):
            raise ConfigError(
                f"config key 'eval.modalities': {m!r} is not one of the model's streams (model.modalities="
                f"{cfg.model.modalities!r})"
            )
    try:
        avsr.init.check_init(cfg.init, cfg.model.modalities, cfg.model.overrides)
    except InitError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.preprocess.root and cfg.preprocess.root != cfg.data.root:
        raise ConfigError("config key 'preprocess.root' is set from data.root; set data.root instead")
    if cfg.units.kind == "characters" and len(set(cfg.units.alphabet)) != len(cfg.units.alphabet):
        raise ConfigError("units.alphabet repeats a character")
    if not cfg.data.train_splits:
        raise ConfigError("data.train_splits is empty")


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
        overrides.update(avsr.init.vatt_frontend_overrides(cfg.init, cfg.model.modalities, vatt_export))
    overrides.update(cfg.model.overrides)
    return overrides


def read_avsr_inits(init: InitConfig) -> dict[str, Export]:
    """The AVSR exports named by ``init``, by key."""
    out = {"avsr_export": read_export(init.avsr_export, kind="avsr")} if init.avsr_export else {}
    for key in FRONTEND_FROM.values():  # a whole AVSR model's, or a self-supervised front-end's (pretrain.py)
        if getattr(init, key):
            exp = read_export(getattr(init, key))
            if exp.kind not in ("avsr", "avsr_frontend"):
                raise ExportError(
                    f"init.{key}: {getattr(init, key)!r} holds a {exp.kind!r} model, "
                    "expected an AVSR model or front-end"
                )
            out[key] = exp
    return out


def main(argv: list[str] | None = None) -> None:
    def parse_check_run() -> None:
        cfg = parse_config(TrainAvsrConfig, sys.argv[1:] if argv is None else argv)
        check_config(cfg)
        check_paths(cfg, files=INPUT_FILES, dirs=INPUT_DIRS)
        run(cfg)

    launch("train_avsr.py", parse_check_run, errors=(InitError, LRS2FormatError, FileNotFoundError))


def run(cfg: TrainAvsrConfig) -> None:
    vatt_export = read_export(cfg.init.vatt_export, kind="vatt") if cfg.init.vatt_export else None
    avsr_inits = read_avsr_inits(cfg.init)
    # Frozen front-ends produce no gradients for a while; DDP has to be told.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.init.freeze_steps > 0)
    trainer = Trainer(cfg, kwargs_handlers=[ddp])
    acc, world = trainer.accelerator, trainer.accelerator.num_processes

    # corpus, run directory, datasets, units
    with acc.main_process_first():
        root = corpus_root(cfg.data, progress=trainer.is_main)
    cfg.data.root = root  # the resolved config names the corpus it used
    cfg.preprocess = dataclasses.replace(cfg.preprocess, root=root)
    run_dir = trainer.open(to_dict(cfg), prefix="train_avsr")
    modalities = cfg.model.modalities
    eval_modalities = cfg.eval.modalities or (["av", "a", "v"] if modalities == "av" else [modalities])
    with acc.main_process_first():
        cfg.preprocess.length_cache = cfg.preprocess.length_cache or str(run_dir / "lengths.json")
        noise = training_noise(cfg.data, cfg.preprocess.sample_rate, root, cfg.seed)
        parts = [
            LRS2Dataset(cfg.preprocess, split, train=True, audio_transform=noise, load_video="v" in modalities,
                        load_audio="a" in modalities)
            for split in cfg.data.train_splits
        ]  # fmt: skip
        lengths = [n for p in parts for n in p.lengths()]
        tokens, encode, units_file = prepare_units(cfg, [t for p in parts for t in p.texts()], run_dir)
        avsr.init.check_units(avsr_inits, tokens)
        val_set = LRS2Dataset(
            cfg.preprocess, cfg.data.val_split, train=False, load_video=any("v" in m for m in eval_modalities),
            load_audio=any("a" in m for m in eval_modalities),
        )  # fmt: skip
        val_set.lengths()
    if not lengths or not len(val_set):
        raise ConfigError(f"{root}: the {'training' if not lengths else 'validation'} split lists no utterances")
    if trainer.is_main:
        save_config(cfg, run_dir / "config.yaml")
    log.info("%d training, %d validation utterances (%s)", len(lengths), len(val_set), root)

    # model (with its pretrained parts), objective, optimizer; the newest state when resuming
    set_seed(cfg.seed)
    model = avsr.create_model(cfg.model.name, **model_overrides(cfg, tokens, vatt_export))
    pretrained = avsr.init.init_frontends(model, cfg.init, modalities, vatt_export, avsr_inits)
    if cfg.sync_batchnorm and world > 1 and acc.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and state-dict keys
    loss_fn = avsr.HybridLoss(**dataclasses.asdict(cfg.loss))
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.max_steps)
    model, optimizer = trainer.prepare(model, optimizer, scheduler, cfg.data.max_fail_fraction)
    net: avsr.AvsrModel = acc.unwrap_model(model)
    frozen = FrozenFrontends(net, pretrained, until=cfg.init.freeze_steps, step=trainer.start_step)

    loader = utterance_loader(
        parts, lengths, cfg.data, seed=cfg.seed, rank=acc.process_index, world_size=world,
        start_step=trainer.start_step * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum,
    )  # fmt: skip
    e = cfg.eval
    val_loader = make_loader(val_set, e.max_frames, cfg.data.num_workers, e.max_utterances)
    decode = DecodeConfig(e.method, e.beam_size, e.ctc_weight, e.length_bonus, threads=cfg.cpu_threads)

    def step_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        targets, target_lengths = (t.to(acc.device) for t in pad_targets([encode(t) for t in batch["text"]]))
        inputs = {k: v.to(acc.device) for k, v in batch.items() if torch.is_tensor(v)}
        out = model(**inputs, targets=targets, target_lengths=target_lengths)
        return loss_fn(**out, targets=targets, target_lengths=target_lengths)

    def evaluate(step: int) -> dict[str, Any] | None:
        result = None
        if trainer.is_main:
            save_export(
                run_dir / "export", kind="avsr", model_name=net.model_name, overrides=net.overrides,
                state_dict=net.state_dict(), preprocess=cfg.preprocess.preprocess(), tokenizer_file=units_file,
                extra={"step": step, "tokens": tokens.to_dict(), "train_splits": cfg.data.train_splits},
            )  # fmt: skip
            result = {"step": step, **validate(net, tokens, val_loader, eval_modalities, decode, acc.device)}
            net.train()
            trainer.metrics.write(result)
            log.info("step %d: %s", step, "  ".join(f"{k} {v:.2f}" for k, v in result.items() if k.startswith("val_w")))
        acc.wait_for_everyone()
        return result

    # train, then finish: last state, evaluation, metrics_final.json, curves.png
    hooks = Hooks(
        is_empty=lambda b: not b["ids"], before_update=frozen.drop_grads, after_step=frozen.after_step,
        count=lambda b: {"utts": len(b["ids"]), "frames": int(b["video_lengths"].sum())}, postfix=["utts_per_s"],
    )  # fmt: skip
    final = trainer.fit(
        loader, step_fn, evaluate, grad_clip=cfg.optim.grad_clip, eval_every=e.every, unit="utterances", hooks=hooks
    )
    if final is not None:
        wers = "  ".join(f"{m}: WER {final[f'val_wer_{m}']:.2f}%" for m in eval_modalities)
        print(f"validation ({cfg.data.val_split}, {e.method}) at step {final['step']}: {wers}")
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
