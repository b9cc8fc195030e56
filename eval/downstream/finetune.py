"""The fine-tune protocol: a tower and a linear head trained end to end on a task's training split.

A run like the launchers' (:class:`train.loop.Trainer`): a run directory with the resolved config,
``metrics.jsonl``, states for resume, ``curves.png``; Accelerate for devices, processes and mixed
precision, so ``accelerate launch -m eval.downstream ... --protocol finetune`` spreads the batches over
processes. Batches are step-indexed (:class:`data.sampling.StepBatchSampler`), so a resumed run sees
the batches the uninterrupted one would. The validation and test accuracy are measured at the end
(and every ``eval.every`` steps), on the main process.

Config keys (``--finetune key=value ...``): ``max_steps``, ``batch_size``, ``pool``, ``optim.*``,
``data.*``, ``eval.every`` and the run keys of :class:`train.config.RunConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from data.downstream import Example, Task
from data.sampling import SeededItems, StepBatchSampler
from train.config import RUN_RANGES, RunConfig, check_ranges, parse_config, save_config, to_dict
from train.loop import Hooks, Trainer
from train.optim import OPTIM_RANGES, OptimConfig, build_optimizer, build_scheduler


@dataclass
class FinetuneData:
    num_workers: int = 0
    max_fail_fraction: float = 0.01


@dataclass
class FinetuneEval:
    every: int = 0  # 0: at the end only
    batch_size: int = 16


@dataclass
class FinetuneConfig(RunConfig):
    max_steps: int = 200
    save_every: int = 0
    log_every: int = 10
    batch_size: int = 16  # over all processes
    pool: Literal["agg", "mean"] = "agg"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=20, weight_decay=0.01))
    data: FinetuneData = field(default_factory=FinetuneData)
    eval: FinetuneEval = field(default_factory=FinetuneEval)


RANGES = {**RUN_RANGES, **OPTIM_RANGES, "batch_size": (">=", 1), "eval.every": (">=", 0), "eval.batch_size": (">=", 1)}


class Classifier(nn.Module):
    """A tower's clip feature (AGG token or mean of tokens) followed by a linear layer to the classes."""

    def __init__(self, tower: nn.Module, num_classes: int, pool: str) -> None:
        super().__init__()
        self.tower, self.pool = tower, pool
        self.head = nn.Linear(tower.dim, num_classes)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(self.tower.forward_batch(batch, self.pool))  # (B, num_classes)


@torch.no_grad()
def accuracy_on(model: Classifier, examples: list[Example], batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy (%) over the examples that decode (the tower's eval decoding)."""
    was = model.training
    model.eval()
    loader = DataLoader(
        model.tower.dataset(examples, train=False), batch_size=batch_size, collate_fn=model.tower.collate
    )
    right = total = 0
    for batch in loader:
        if not batch["ids"]:
            continue
        pred = model(batch).argmax(dim=1).cpu()
        right += int((pred == batch["label"]).sum())
        total += len(pred)
    model.train(was)
    return 100.0 * right / max(1, total)


def run_name(task: str, modality: str, init: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', task)}-{modality}-{init}-s{seed}"


def finetune(task: Task, hcfg: Any, modality: str, init: str, seed: int) -> tuple[float, float, dict[str, Any]]:
    """Fine-tune ``modality``'s tower of ``hcfg.export`` (pretrained or random-init) on ``task``; returns
    test accuracy, validation accuracy and the run's facts (run directory, steps)."""
    from eval.downstream.towers import load_tower

    out = Path(hcfg.finetune_dir or "runs/downstream") / run_name(task.name, modality, init, seed)
    cfg = parse_config(FinetuneConfig, [*hcfg.finetune_args, f"seed={seed}", f"output_dir={out}"])
    check_ranges(cfg, RANGES)
    trainer = Trainer(cfg)
    acc, world = trainer.accelerator, trainer.accelerator.num_processes
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} processes x grad_accum")
    identity = {"task": task.name, "export": str(hcfg.export), "tower": modality, "init": init, **to_dict(cfg)}
    run_dir = trainer.open(identity, prefix="finetune")
    if trainer.is_main:
        save_config(cfg, run_dir / "config.yaml")

    # model and optimizer; the newest state when resuming
    torch.manual_seed(seed)
    tower = load_tower(hcfg.export, modality, init=init, seed=seed)  # its own copy: fine-tuning changes it
    model = Classifier(tower, task.num_classes, cfg.pool)
    optimizer = build_optimizer(cfg.optim, model)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.max_steps)
    model, optimizer = trainer.prepare(model, optimizer, scheduler, cfg.data.max_fail_fraction)

    # step-indexed batches of augmented training examples
    micro = cfg.batch_size // cfg.grad_accum
    sampler = StepBatchSampler(
        len(task.splits["train"]), micro, seed=seed, rank=acc.process_index, world_size=world,
        start_step=trainer.start_step * cfg.grad_accum, max_steps=cfg.max_steps * cfg.grad_accum,
    )  # fmt: skip
    dataset = SeededItems(tower.dataset(task.splits["train"], train=True))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=tower.collate, num_workers=cfg.data.num_workers)

    def step_fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch)
        return {"loss": F.cross_entropy(logits, batch["label"].to(logits.device))}

    def evaluate(step: int) -> dict[str, float] | None:
        result = None
        if trainer.is_main:
            net = acc.unwrap_model(model)
            result = {
                split: accuracy_on(net, task.splits[split], cfg.eval.batch_size, acc.device)
                for split in ("val", "test")
            }
            trainer.metrics.write({"step": step, **{f"{k}_accuracy": v for k, v in result.items()}})
        acc.wait_for_everyone()
        return result

    hooks = Hooks(count=lambda b: {"examples": len(b["ids"])}, postfix=["examples_per_s"])
    final = trainer.fit(
        loader, step_fn, evaluate, grad_clip=cfg.optim.grad_clip, eval_every=cfg.eval.every, unit="examples",
        hooks=hooks,
    )  # fmt: skip
    if final is None:
        raise KeyboardInterrupt(f"fine-tune stopped; its state is in {run_dir}")
    return final["test"], final["val"], {"run_dir": str(run_dir), "steps": cfg.max_steps, "lr": cfg.optim.lr}
