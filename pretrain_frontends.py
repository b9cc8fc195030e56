"""Self-supervised pretraining of the AVSR front-ends, the two objectives Pan et al. (2022) start from:

    accelerate launch pretrain.py objective=moco [--config configs/pretrain/moco_speech.yaml] [key=value ...]
    accelerate launch pretrain.py objective=wav2vec2 [--config configs/pretrain/wav2vec2_speech.yaml] ...

- ``moco``: MoCo v2 (:mod:`avsr.ssl.moco`) on the visual front-end (3-D stem + ResNet), two augmented
  views of each utterance's mouth crops (:func:`data.views.two_views`: crop, flip, temporal jitter);
- ``wav2vec2``: wav2vec 2.0 (:mod:`avsr.ssl.wav2vec2`) on the wav2vec 2.0 audio front-end, a random crop
  of ``data.audio_seconds`` of each utterance.

Utterances come unlabelled from an LRS2 layout (``data.root``; empty: the synthetic speech corpus that
train_avsr.py uses, generated on first use), from ``data.train_splits`` (the ``pretrain`` split by
default; transcripts are never read). The run directory is pretrain.py's; the export is an
``avsr_frontend`` export holding the front-end's weights under the AVSR model's names, which
``train_avsr.py`` loads with ``init.video_frontend_from`` / ``init.audio_frontend_from``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from avsr.frontends.audio import Wav2Vec2AudioFrontend
from avsr.frontends.frames import samples_per_frame
from avsr.frontends.visual import ResNetVideoFrontend
from avsr.ssl import moco as moco_lib
from avsr.ssl import wav2vec2 as w2v_lib
from data.collate import ItemFailure
from data.lrs2 import LRS2Config, LRS2Dataset, pad_stack
from data.sampling import SeededItems, StepBatchSampler
from data.schema import ConfigError, check_ranges, to_dict
from data.utterances import SynthConfig
from data.views import two_views
from train.config import RUN_RANGES, RunConfig, save_config
from train.export import save_export
from train.loop import Hooks, Trainer
from train.optim import OPTIM_RANGES, OptimConfig, build_optimizer, build_scheduler

log = logging.getLogger("pretrain")


@dataclass
class UtteranceData:
    root: str = ""  # an LRS2 directory; empty: the synthetic speech corpus (see synth)
    train_splits: list[str] = field(default_factory=lambda: ["pretrain"])
    val_split: str = "val"
    audio_seconds: float = 2.0  # wav2vec2: the length of the random crop of each utterance
    num_workers: int = 0
    max_fail_fraction: float = 0.01
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class VisualFrontend:
    # blocks per stage, as avsr's video_resnet_layers: one, as avsr_transformer_tiny; ResNet-18 is (2, 2, 2, 2)
    resnet_layers: tuple[int, ...] = (1, 1, 1, 1)
    crop: int = 32  # side of each view's random crop; the mouth image is preprocess.resize


@dataclass
class AudioFrontend:
    # As avsr's wav2vec2_arch / wav2vec2_kwargs: a torchaudio factory, or "custom" with every field.
    arch: str = "custom"
    kwargs: dict[str, Any] = field(default_factory=lambda: dict(TINY_WAV2VEC2))


# A CPU-sized wav2vec 2.0 (20 ms frames at 16 kHz, width 144, 4 layers): the audio front-end of the
# configs/avsr/*_w2v.yaml recipes.
TINY_WAV2VEC2: dict[str, Any] = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[64, 10, 5], [64, 3, 2], [64, 3, 2], [64, 3, 2], [64, 2, 2], [64, 2, 2]],
    "extractor_conv_bias": False,
    "encoder_embed_dim": 144,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 32,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 4,
    "encoder_num_heads": 4,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 576,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}


@dataclass
class FrontendPretrainConfig(RunConfig):
    objective: Literal["moco", "wav2vec2"] = "moco"
    max_steps: int = 500
    batch_size: int = 16  # utterances per optimizer step, over all processes and accumulation steps
    data: UtteranceData = field(default_factory=UtteranceData)
    # train_avsr.py's CPU-sized mouth images (the box resized to 36x36); the LRS2 recipe uses 96
    preprocess: LRS2Config = field(default_factory=lambda: LRS2Config(root="", resize=36, crop=36, hflip_prob=0.0))
    visual: VisualFrontend = field(default_factory=VisualFrontend)
    audio: AudioFrontend = field(default_factory=AudioFrontend)
    moco: moco_lib.MocoConfig = field(default_factory=lambda: moco_lib.MocoConfig(queue_size=1024, clip_frames=16))
    wav2vec2: w2v_lib.Wav2Vec2SslConfig = field(default_factory=w2v_lib.Wav2Vec2SslConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50, weight_decay=0.01))
    eval_every: int = 0  # validation (and export) every N steps; 0: only at the end
    eval_batches: int = 8  # validation batches of batch_size utterances


RANGES = {
    **RUN_RANGES,
    **OPTIM_RANGES,
    "batch_size": (">=", 2),
    "data.audio_seconds": (">", 0),
    "data.num_workers": (">=", 0),
    "data.max_fail_fraction": ("in", 0, 1),
    "visual.crop": (">=", 8),
    "eval_every": (">=", 0),
    "eval_batches": (">=", 1),
}


def check_config(cfg: FrontendPretrainConfig) -> None:
    check_ranges(cfg, RANGES)
    if cfg.batch_size % cfg.grad_accum:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    if cfg.objective == "moco" and cfg.visual.crop > cfg.preprocess.resize:
        raise ConfigError(f"config key 'visual.crop': {cfg.visual.crop} is larger than preprocess.resize")
    try:
        dataclasses.replace(cfg.moco)  # MocoConfig checks its own fields
    except ValueError as exc:
        raise ConfigError(f"config section 'moco': {exc}") from None


class MouthViews(Dataset):
    """Item i: two augmented views of utterance i's mouth images (or the :class:`ItemFailure`)."""

    def __init__(self, base: LRS2Dataset, crop: int, frames: int) -> None:
        self.base, self.crop, self.frames = base, crop, frames

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | ItemFailure:
        item = self.base[index]
        if isinstance(item, ItemFailure):
            return item
        c = self.base.cfg
        clip = (item["video"] * c.std + c.mean).clamp(0.0, 1.0)  # back to [0, 1]: the views normalise again
        v1, v2 = two_views(clip, crop=self.crop, frames=self.frames, mean=c.mean, std=c.std)
        return {"id": item["id"], "view_q": v1.video, "view_k": v2.video, "len_q": v1.length, "len_k": v2.length}


class AudioCrops(Dataset):
    """Item i: a random ``seconds`` crop of utterance i's audio (the whole of a shorter one)."""

    def __init__(self, base: LRS2Dataset, seconds: float) -> None:
        self.base, self.samples = base, round(seconds * base.cfg.sample_rate)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | ItemFailure:
        item = self.base[index]
        if isinstance(item, ItemFailure):
            return item
        audio = item["audio"]
        start = int(torch.randint(max(1, audio.shape[0] - self.samples + 1), ()))
        return {"id": item["id"], "audio": audio[start : start + self.samples]}


def collate(items: list[dict[str, Any] | ItemFailure]) -> dict[str, Any]:
    """Stack views (``view_q``, ``view_k`` (B, F, 1, H, W) with ``len_q``/``len_k``) or pad audio crops
    (``audio`` (B, S), ``audio_lengths``); ``ids`` and ``failures`` as every batch of the project."""
    good = [x for x in items if not isinstance(x, ItemFailure)]
    batch: dict[str, Any] = {"ids": [x["id"] for x in good], "failures": [(x.path, x.reason) for x in items
                                                                         if isinstance(x, ItemFailure)]}  # fmt: skip
    if not good:
        return batch
    if "view_q" in good[0]:
        for key in ("view_q", "view_k"):
            batch[key] = torch.stack([x[key] for x in good])
        for key in ("len_q", "len_k"):
            batch[key] = torch.tensor([x[key] for x in good], dtype=torch.int64)
    else:
        batch["audio"] = pad_stack([x["audio"] for x in good])
        batch["audio_lengths"] = torch.tensor([x["audio"].shape[0] for x in good], dtype=torch.int64)
    return batch


def _datasets(cfg: FrontendPretrainConfig, root: str) -> tuple[Dataset, Dataset]:
    pp = dataclasses.replace(cfg.preprocess, root=root)
    video = cfg.objective == "moco"

    def wrap(split: str) -> Dataset:
        base = LRS2Dataset(pp, split, train=False, load_video=video, load_audio=not video)
        if video:
            return MouthViews(base, cfg.visual.crop, cfg.moco.clip_frames)
        return AudioCrops(base, cfg.data.audio_seconds)

    train = torch.utils.data.ConcatDataset([wrap(s) for s in cfg.data.train_splits])
    return train, wrap(cfg.data.val_split)


def run(cfg: FrontendPretrainConfig) -> None:
    from data.utterances import DataConfig, corpus_root

    trainer = Trainer(cfg)
    acc, world = trainer.accelerator, trainer.accelerator.num_processes
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ConfigError(f"batch_size/grad_accum = {micro} is not divisible by {world} processes")

    # corpus, run directory, data
    with acc.main_process_first():
        root = corpus_root(DataConfig(root=cfg.data.root, synth=cfg.data.synth), progress=trainer.is_main)
    cfg.data.root = root  # the resolved config names the corpus it used
    run_dir = trainer.open(to_dict(cfg), prefix=f"pretrain-{cfg.objective}")
    if trainer.is_main:
        save_config(cfg, run_dir / "config.yaml")
    train_set, val_set = _datasets(cfg, root)
    if not len(train_set) or not len(val_set):
        raise ConfigError(
            f"{root}: split {cfg.data.train_splits if not len(train_set) else cfg.data.val_split} is empty"
        )
    log.info("%d training, %d validation utterances (%s)", len(train_set), len(val_set), root)

    # model, objective, optimizer; the newest state when resuming
    set_seed(cfg.seed)
    if cfg.objective == "moco":
        frontend = ResNetVideoFrontend(1, tuple(cfg.visual.resnet_layers))
        model: torch.nn.Module = moco_lib.MocoModel(frontend, cfg.moco)
        loss_fn: torch.nn.Module = moco_lib.MocoLoss(cfg.moco.temperature)
    else:
        spf = samples_per_frame(cfg.preprocess.sample_rate, cfg.preprocess.fps)
        frontend = Wav2Vec2AudioFrontend(spf, cfg.audio.arch, cfg.audio.kwargs)
        w = cfg.wav2vec2
        model = w2v_lib.Wav2Vec2Pretrain(frontend.model, w)
        loss_fn = w2v_lib.Wav2Vec2Loss(w.logit_temp, w.diversity_weight, w.feature_pen_weight)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.max_steps)
    model, optimizer = trainer.prepare(model, optimizer, scheduler, cfg.data.max_fail_fraction)
    net = acc.unwrap_model(model)

    sampler = StepBatchSampler(
        len(train_set), micro, seed=cfg.seed, rank=acc.process_index, world_size=world,
        start_step=trainer.start_step * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum,
    )  # fmt: skip
    loader = DataLoader(
        SeededItems(train_set), batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers
    )
    keys: list[torch.Tensor] = []  # MoCo: this step's keys of every micro-batch and process

    def forward(batch: dict[str, Any], m: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        b = {k: v.to(acc.device) for k, v in batch.items() if torch.is_tensor(v)}
        if cfg.objective == "moco":
            out = m(b["view_q"], b["view_k"], b["len_q"], b["len_k"])
        else:
            out = m(b["audio"], b["audio_lengths"])
        return out, loss_fn(**out)

    def step_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out, losses = forward(batch, model)
        if cfg.objective == "moco":
            keys.append(acc.gather(out["k"].detach()))
        return losses

    def after_step(step: int) -> None:
        if cfg.objective == "moco":
            net.after_step(torch.cat(keys))
            keys.clear()
        else:
            net.quantizer.set_temperature(step)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        """Mean loss and accuracy (the positive scored above every negative) over ``eval_batches``.

        MoCo's held-out clips are scored against the other keys of their batch (chance: ln B and 1/B), not
        against the training queue: the queue's keys were encoded with training batches' batch-norm
        statistics, the held-out ones with the running statistics, and that difference alone ranks them apart.
        """
        net.eval()
        gen = torch.Generator().manual_seed(0)  # the same views, crops and masks at every evaluation
        totals = {"val_loss": 0.0, "val_accuracy": 0.0}
        n = 0
        for i in range(min(cfg.eval_batches, -(-len(val_set) // micro))):
            idx = list(range(i * micro, min(len(val_set), (i + 1) * micro)))
            seeds = torch.randint(2**31 - 1, (len(idx),), generator=gen).tolist()
            batch = collate([SeededItems(val_set)[(j, s)] for j, s in zip(idx, seeds)])
            if len(batch["ids"]) < 2:
                continue
            out, losses = forward(batch, net)
            if cfg.objective == "moco":
                loss, accuracy = moco_in_batch(out["q"], out["k"], cfg.moco.temperature)
            else:
                loss, accuracy = float(losses["loss"]), _w2v_accuracy(out, cfg.wav2vec2.logit_temp)
            totals["val_loss"] += loss
            totals["val_accuracy"] += accuracy
            n += 1
        net.train()
        return {k: v / max(1, n) for k, v in totals.items()}

    def evaluate(step: int) -> dict[str, Any] | None:
        result = None
        if trainer.is_main:
            save_frontend_export(cfg, net, run_dir / "export", step)
            result = {"step": step, **validate()}
            trainer.metrics.write(result)
            log.info("step %d: val_loss %.4f  val_accuracy %.2f%%", step, result["val_loss"], result["val_accuracy"])
        acc.wait_for_everyone()
        return result

    hooks = Hooks(after_step=after_step, count=lambda b: {"utts": len(b["ids"])}, postfix=["utts_per_s"])
    final = trainer.fit(
        loader, step_fn, evaluate, grad_clip=cfg.optim.grad_clip, eval_every=cfg.eval_every, unit="utterances",
        hooks=hooks,
    )  # fmt: skip
    if final is not None:
        print(
            f"validation at step {final['step']}: loss {final['val_loss']:.4f}, accuracy {final['val_accuracy']:.2f}%"
        )
        print(f"run directory: {run_dir}")


def moco_in_batch(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[float, float]:
    """InfoNCE loss and percent top-1 of each query against every key of the batch, its own the positive."""
    logits = q @ k.T / temperature  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    loss = torch.nn.functional.cross_entropy(logits, target)
    return float(loss), 100.0 * float((logits.argmax(1) == target).float().mean())


def _w2v_accuracy(out: dict[str, torch.Tensor], logit_temp: float) -> float:
    """Percent of masked steps whose quantised target outscores every distractor."""
    logits = w2v_lib.contrastive_logits(
        out["context"], out["targets"], out["mask"], logit_temp, negative_steps=out["negative_steps"]
    )  # fmt: skip
    return 100.0 * float((logits[:, 0] > logits[:, 1:].max(1).values).float().mean())


def save_frontend_export(cfg: FrontendPretrainConfig, net: torch.nn.Module, path: Any, step: int) -> None:
    """The trained front-end under the AVSR model's names (``video_frontend.*`` or ``audio_frontend.model.*``),
    with the AVSR config fields that rebuild it as ``overrides``."""
    if cfg.objective == "moco":
        weights = {f"video_frontend.{k}": v for k, v in moco_lib.frontend_state_dict(net).items()}
        overrides: dict[str, Any] = {
            "video_frontend": "resnet18",
            "video_resnet_layers": list(cfg.visual.resnet_layers),
        }
        stream = "v"
    else:
        weights = {f"audio_frontend.model.{k}": v for k, v in w2v_lib.frontend_state_dict(net).items()}
        overrides = {"audio_frontend": "wav2vec2", "wav2vec2_arch": cfg.audio.arch, "wav2vec2_kwargs": cfg.audio.kwargs}
        stream = "a"
    save_export(
        path, kind="avsr_frontend", model_name=f"{cfg.objective}_frontend", overrides=overrides,
        state_dict=weights, preprocess=cfg.preprocess.preprocess(),
        extra={"step": step, "objective": cfg.objective, "stream": stream},
    )  # fmt: skip
