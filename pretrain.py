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
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate.utils import set_seed

import vatt
from data.clips import DataConfig, clip_loader, prepare_tokenizer, read_manifests
from data.collate import batch_size
from data.schema import ConfigError, check_ranges, to_dict
from data.synth import shapes
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig
from eval.retrieval import evaluate_retrieval, format_table
from train.config import RUN_RANGES, RunConfig, check_paths, load_yaml, parse_config, save_config
from train.export import save_export
from train.loop import Hooks, Trainer, launch
from train.optim import OPTIM_RANGES, OptimConfig, build_optimizer, build_scheduler
from train.run_dir import cpu_threads
from vatt.losses import VattLoss

log = logging.getLogger("pretrain")


def _cpu_preprocess() -> PreprocessConfig:
    # The built-in corpus at CPU size: 8 frames of 64x64 over the 3.2 s clip, audio at 4 kHz: its notes
    # (262-990 Hz with their contours) and their second harmonics fit under 2 kHz, in 100 audio tokens.
    return shapes.demo_preprocess(sample_rate=4000)


@dataclass
class ModelConfig:
    name: str = "vatt_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # architecture fields, e.g. {"video.depth": 2}
    drop_token: float = 0.5  # keep ratio of video and audio tokens in training


@dataclass
class LossConfig:
    temperature: float = 0.07
    nce_weight: float = 1.0  # loss = (nce_weight * NCE + milnce_weight * MIL-NCE) / (sum of weights); VATT: 1, 1
    milnce_weight: float = 1.0


@dataclass
class EvalConfig:
    every: int = 0  # retrieval eval + export every N steps; 0: only at the end
    clips_per_video: int = 1  # the built-in corpus's videos are one clip long; VATT's recipe: 4
    batch_size: int = 64


def _cpu_optim() -> OptimConfig:
    # VATT: 1e-4 at batch 2048 (configs/pretrain)
    return OptimConfig(name="adam", lr=5e-4, end_lr=1e-4, warmup_steps=100, betas=(0.9, 0.999))


@dataclass
class PretrainConfig(RunConfig):
    # vatt: this file's recipe; moco, wav2vec2: the AVSR front-ends' (pretrain_frontends.py)
    objective: Literal["vatt", "moco", "wav2vec2"] = "vatt"
    batch_size: int = 64  # clips per optimizer step, over all processes and accumulation steps
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=_cpu_preprocess)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=_cpu_optim)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Every count and fraction of the config, checked before any work.
RANGES = {
    **RUN_RANGES,
    **OPTIM_RANGES,
    "batch_size": (">=", 1),
    "loss.temperature": (">", 0),
    "loss.nce_weight": (">=", 0),
    "loss.milnce_weight": (">=", 0),
    "eval.every": (">=", 0),
    "eval.clips_per_video": (">=", 1),
    "eval.batch_size": (">=", 1),
    "data.synth_train": (">=", 1),
    "data.synth_val": (">=", 1),
    "data.vocab_size": (">=", 8),
    "data.num_workers": (">=", 0),
    "data.groups_per_batch": (">=", 0),
    "data.decode_threads": (">=", 0),
    "data.cache_mb": (">=", 0),
    "data.max_fail_fraction": ("in", 0, 1),
    "model.drop_token": ("in", 0.01, 1),
}


def check_config(cfg: PretrainConfig) -> None:
    """What the dataclass types cannot say, before any work; raises :class:`ConfigError` naming the key."""
    check_ranges(cfg, RANGES)
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    if cfg.loss.nce_weight + cfg.loss.milnce_weight <= 0:
        raise ConfigError("config keys 'loss.nce_weight' and 'loss.milnce_weight' are both 0; expected a positive sum")


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


def objective_of(argv: list[str]) -> str:
    """The ``objective`` the arguments ask for (the last ``objective=`` override, else the config file's);
    each objective parses the whole config with its own dataclasses, so this is read first."""
    chosen = [a.split("=", 1)[1].strip() for a in argv if a.startswith("objective=")]
    if chosen:
        return chosen[-1]
    for i, arg in enumerate(argv):
        path = (
            argv[i + 1]
            if arg == "--config" and i + 1 < len(argv)
            else arg.split("=", 1)[1]
            if arg.startswith("--config=")
            else None
        )
        if path:
            value = load_yaml(path).get("objective", "vatt")
            return value if isinstance(value, str) else "vatt"
    return "vatt"


def main(argv: list[str] | None = None) -> None:
    def parse_check_run() -> None:
        args = sys.argv[1:] if argv is None else argv
        if objective_of(args) in ("moco", "wav2vec2"):
            import pretrain_frontends as frontends

            fcfg = parse_config(frontends.FrontendPretrainConfig, args)
            frontends.check_config(fcfg)
            check_paths(fcfg, dirs=["data.root"])
            frontends.run(fcfg)
            return
        cfg = parse_config(PretrainConfig, args)
        check_config(cfg)
        check_paths(cfg, files=["data.train_manifests", "data.val_manifest", "data.tokenizer"])
        run(cfg)

    launch("pretrain.py", parse_check_run)


def run(cfg: PretrainConfig) -> None:
    trainer = Trainer(cfg)
    acc, world = trainer.accelerator, trainer.accelerator.num_processes
    micro_batch = cfg.batch_size // cfg.grad_accum  # over all processes
    if micro_batch % world:
        raise ConfigError(f"batch_size/grad_accum = {micro_batch} is not divisible by {world} processes")

    # data, run directory, tokenizer
    with acc.main_process_first():
        manifests, val_manifest = read_manifests(cfg.data, cfg.seed)
    run_dir = trainer.open(to_dict(cfg), prefix="pretrain")
    with acc.main_process_first():
        tok_file = prepare_tokenizer(cfg.data, manifests, run_dir)
    if trainer.is_main:
        save_config(cfg, run_dir / "config.yaml")
    tokenizer = Tokenizer(tok_file)

    # model, objective, optimizer; the newest state when resuming
    set_seed(cfg.seed)
    overrides = model_overrides(cfg, tokenizer.vocab_size)
    model = vatt.create_model(cfg.model.name, **overrides)
    loss_fn = VattLoss(**dataclasses.asdict(cfg.loss))
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.max_steps)
    model, optimizer = trainer.prepare(model, optimizer, scheduler, cfg.data.max_fail_fraction)

    # training data: decoded clips cached in memory when they fit
    loader = clip_loader(
        manifests, cfg.preprocess, tokenizer, cfg.data, micro_batch, seed=cfg.seed, rank=acc.process_index,
        world_size=world, start_step=trainer.start_step * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum,
        prefill_workers=cpu_threads(0, world), progress=trainer.is_main,
    )  # fmt: skip

    def step_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model(batch["video"], batch["audio"], batch["text_ids"], batch["text_lengths"])
        return loss_fn(**out, **{k: batch[k] for k in ("text_lengths", "text_mask", "audio_mask")})

    def evaluate(step: int) -> dict[str, dict[str, float]] | None:
        result = None
        if trainer.is_main:
            net = acc.unwrap_model(model)
            export = save_export(
                run_dir / "export",
                kind="vatt",
                model_name=cfg.model.name,
                overrides=overrides,
                tokenizer_file=tok_file,
                state_dict=net.state_dict(),
                preprocess=cfg.preprocess.to_dict(),
                extra={"step": step},
            )
            e = cfg.eval
            result = evaluate_retrieval(
                net, cfg.preprocess, tokenizer, val_manifest, clips_per_video=e.clips_per_video,
                batch_size=e.batch_size, num_workers=cfg.data.num_workers, index_dir=run_dir / "index",
                export_dir=export, device=acc.device,
            )  # fmt: skip
            net.train()
            trainer.metrics.write({"step": step, **{f"{k}/{m}": v for k, ms in result.items() for m, v in ms.items()}})
        acc.wait_for_everyone()
        return result

    # train, then finish: last state, evaluation, metrics_final.json, curves.png
    hooks = Hooks(
        is_empty=lambda b: not batch_size(b), count=lambda b: {"clips": batch_size(b)}, postfix=["clips_per_s"]
    )
    final = trainer.fit(
        loader, step_fn, evaluate, grad_clip=cfg.optim.grad_clip, eval_every=cfg.eval.every, unit="clips", hooks=hooks
    )
    if final is not None:
        print(format_table(final))
        print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
