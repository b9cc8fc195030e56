"""Run the probe protocols of one or more tasks on a tower and its random-init twin.

For every initialisation and seed the tower's features of every example are computed once and cached
(a task's splits and the tasks that share files reuse them); the probes then run on those features:

- ``linear``: a logistic-regression probe, its learning rate and weight decay chosen on the validation
  split (:func:`eval.downstream.probes.fit_linear`);
- ``fewshot``: the same probe trained on ``shots`` examples per class drawn by the seed (5 and 20);
- ``knn``: cosine k-NN, k chosen on the validation split;
- ``zeroshot``: class prompts through the text tower (video tasks of a model that has one);
- ``finetune``: the tower and a linear head trained end to end (:mod:`eval.downstream.finetune`).

The pretrained tower is deterministic, so its seeds vary only the probe (the draw of few-shot
examples, the probe's initialisation); each seed of the random-init twin is another random tower.
A task without a validation split gets one carved from its training split, keeping groups (speakers,
source videos) whole.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from data.downstream import Example, Task, TaskError
from eval.downstream import probes, zeroshot
from eval.downstream.report import Record

log = logging.getLogger(__name__)

PROTOCOLS = ("linear", "fewshot", "knn", "zeroshot", "finetune")
DEFAULT_PROTOCOLS = ("linear", "fewshot", "knn", "zeroshot")


@dataclass
class HarnessConfig:
    export: Path
    tower: str | None = None  # None: the task's first modality
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    inits: tuple[str, ...] = ("pretrained", "random")
    seeds: int = 3
    pool: str = "agg"
    shots: tuple[int, ...] = (5, 20)
    device: str = "cpu"
    progress: bool = True
    finetune_args: list[str] = field(default_factory=list)  # key=value overrides of the fine-tune config
    finetune_dir: Path | None = None
    # Frame tasks have tens of thousands of frames; their probes are fitted on this many training (and
    # validation) frames drawn by the seed, which costs a minute instead of a quarter of an hour.
    max_frames: int = 5000


def with_val(task: Task, fraction: float = 0.15, seed: int = 0) -> Task:
    """``task`` with a "val" split: its own, or whole groups (about ``fraction`` of the examples) moved
    out of "train" by a seeded draw. Examples without a group are their own group."""
    if "val" in task.splits:
        return task
    if "train" not in task.splits:
        raise TaskError(f"{task.name}: no 'train' split to fit a probe on")
    train = task.splits["train"]
    groups = sorted({ex.group or f"#{i}" for i, ex in enumerate(train)})
    random.Random(seed).shuffle(groups)
    target, held, taken = fraction * len(train), set(), 0
    sizes: dict[str, int] = {}
    for i, ex in enumerate(train):
        key = ex.group or f"#{i}"
        sizes[key] = sizes.get(key, 0) + 1
    for g in groups:
        if taken >= target:
            break
        held.add(g)
        taken += sizes[g]
    keys = [ex.group or f"#{i}" for i, ex in enumerate(train)]
    splits = dict(task.splits)
    splits["train"] = [ex for ex, k in zip(train, keys) if k not in held]
    splits["val"] = [ex for ex, k in zip(train, keys) if k in held]
    return replace(task, splits=splits)


class FeatureCache:
    """Towers by (modality, init, seed), decoded inputs by (modality, example) and features by tower and
    example, each computed once per run: the pretrained tower and its random-init twins share the
    export's preprocessing, so every file is decoded once."""

    def __init__(self, load: Callable[[str, str, int], Any], pool: str, progress: bool) -> None:
        self._load, self.pool, self.progress = load, pool, progress
        self._towers: dict[tuple[str, str, int], Any] = {}
        self._inputs: dict[tuple[str, Example], Any] = {}
        self._features: dict[tuple[Any, ...], dict[Example, torch.Tensor | None]] = {}

    def tower(self, modality: str, init: str, seed: int) -> Any:
        key = (modality, init, seed if init == "random" else 0)
        if key not in self._towers:
            self._towers[key] = self._load(*key)
        return self._towers[key]

    def _compute(self, key: tuple[Any, ...], examples: Sequence[Example], **how: Any) -> list[torch.Tensor | None]:
        modality = key[0]
        known = self._features.setdefault(key, {})
        todo = list(dict.fromkeys(ex for ex in examples if ex not in known))
        if todo:
            tower = self.tower(*key[:3])
            new = [ex for ex in todo if (modality, ex) not in self._inputs]
            for ex, item in zip(new, tower.decode(new, progress=self.progress)):
                self._inputs[(modality, ex)] = item
            items = [self._inputs[(modality, ex)] for ex in todo]
            feats, kept = tower.item_features(items, progress=self.progress, **how)
            for ex in todo:
                known[ex] = None
            for row, i in enumerate(kept.tolist()):
                known[todo[i]] = feats[row]
        return [known[ex] for ex in examples]

    def clip(
        self, modality: str, init: str, seed: int, examples: Sequence[Example], pool: str | None = None
    ) -> list[torch.Tensor | None]:
        """Clip-level features of ``examples`` (None for an example that could not be decoded)."""
        pool = pool or self.pool
        key = (modality, init, seed if init == "random" else 0, "clip", pool)
        return self._compute(key, examples, pool=pool)

    def frames(
        self, modality: str, init: str, seed: int, examples: Sequence[Example], hop: float
    ) -> list[torch.Tensor | None]:
        """Frame features (T_i, D) of ``examples``, one row per ``hop`` seconds (None: not decodable)."""
        key = (modality, init, seed if init == "random" else 0, "frames", hop)
        return self._compute(key, examples, hop=hop)


def _stack(feats: list[torch.Tensor | None], examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Features and labels of the decodable examples, and how many were skipped."""
    rows = [(f, ex.label) for f, ex in zip(feats, examples) if f is not None]
    if not rows:
        raise TaskError("no example of a split could be decoded")
    x = torch.stack([f for f, _ in rows]).float()
    y = torch.tensor([label for _, label in rows], dtype=torch.int64)
    return x, y, len(examples) - len(rows)


def _frame_rows(
    feats: list[torch.Tensor | None], examples: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor, int]:
    kept = [(f, ex) for f, ex in zip(feats, examples) if f is not None]
    if not kept:
        raise TaskError("no example of a split could be decoded")
    labels = []
    for f, ex in kept:
        lab = torch.full((f.shape[0],), -1, dtype=torch.int64)
        given = torch.tensor(ex.frame_labels or (), dtype=torch.int64)[: f.shape[0]]
        lab[: len(given)] = given  # frames past the labelled span are left out (-1)
        labels.append(lab)
    x, y = probes.flatten_frames([f.float() for f, _ in kept], labels, ignore=-1)
    return x, y, len(examples) - len(kept)


def _subsample(x: torch.Tensor, y: torch.Tensor, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``limit`` rows, drawn without replacement by ``seed`` (all of them when fewer)."""
    if limit <= 0 or len(y) <= limit:
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return x[keep], y[keep]


def chance_of(y: torch.Tensor) -> float:
    """Accuracy (%) of always answering the most frequent class."""
    return 100.0 * float(torch.bincount(y).max()) / max(1, len(y))


def run_task(task: Task, cfg: HarnessConfig, cache: FeatureCache) -> list[Record]:
    """Every protocol x initialisation x seed of ``task``; the records in that order."""
    task = with_val(task)
    modality = cfg.tower or task.modalities[0]
    if modality not in task.modalities:
        raise TaskError(f"{task.name}: offers {', '.join(task.modalities)}, not {modality!r}")
    frame_task = task.frame_hop is not None
    records: list[Record] = []
    for init in cfg.inits:
        for seed in range(cfg.seeds):
            data: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
            for split in ("train", "val", "test"):
                examples = task.splits.get(split, [])
                if not examples:
                    raise TaskError(f"{task.name}: split {split!r} is empty")
                if frame_task:
                    feats = cache.frames(modality, init, seed, examples, task.frame_hop)
                    data[split] = _frame_rows(feats, examples)
                else:
                    data[split] = _stack(cache.clip(modality, init, seed, examples), examples)
            (xtr, ytr, _), (xva, yva, _), (xte, yte, skipped) = data["train"], data["val"], data["test"]
            if frame_task:  # probes fit on a seeded draw of frames; every test frame is scored
                xtr, ytr = _subsample(xtr, ytr, cfg.max_frames, seed)
                xva, yva = _subsample(xva, yva, cfg.max_frames, seed + 1_000)
            base = {"task": task.name, "tower": modality, "init": init, "seed": seed, "chance": chance_of(yte)}
            base["num_test"] = len(yte)
            for protocol in cfg.protocols:
                for rec in _protocol(task, cfg, cache, protocol, modality, init, seed, (xtr, ytr, xva, yva, xte, yte)):
                    rec.params["skipped_test"] = skipped
                    records.append(Record(**base, **rec.__dict__))
    return records


@dataclass
class _Result:
    protocol: str
    accuracy: float
    val_accuracy: float | None
    num_train: int
    params: dict[str, Any]


def _protocol(task, cfg, cache, protocol, modality, init, seed, data) -> list[_Result]:  # noqa: ANN001
    xtr, ytr, xva, yva, xte, yte = data
    n = task.num_classes
    frame_task = task.frame_hop is not None
    if protocol == "linear":
        probe = probes.fit_linear(xtr, ytr, xva, yva, n, seed=seed)
        acc = probes.accuracy(probe.predict(xte), yte)
        return [_Result("linear", acc, probe.val_accuracy, len(ytr), {"lr": probe.lr, "wd": probe.wd})]
    if protocol == "fewshot":
        if frame_task:
            return []
        out = []
        for shots in cfg.shots:
            try:
                idx = probes.few_shot_indices(ytr, shots, seed)
            except ValueError as exc:
                if seed == 0 and init == cfg.inits[0]:
                    log.warning("%s: %d-shot left out: %s", task.name, shots, exc)
                continue
            probe = probes.fit_linear(xtr[idx], ytr[idx], xva, yva, n, seed=seed)
            acc = probes.accuracy(probe.predict(xte), yte)
            out.append(_Result(f"{shots}-shot", acc, probe.val_accuracy, len(idx), {"lr": probe.lr, "wd": probe.wd}))
        return out
    if protocol == "knn":
        knn = probes.fit_knn(xtr, ytr, xva, yva, n)
        acc = probes.accuracy(knn.predict(xte), yte)
        return [_Result("knn", acc, knn.val_accuracy, len(ytr), {"k": knn.k})]
    if protocol == "zeroshot":
        tower = cache.tower(modality, init, seed)
        if frame_task or modality != "video" or not task.prompts or getattr(tower, "tokenizer", None) is None:
            return []
        if cfg.pool != "agg":  # the video-text head reads the AGG token
            test = task.splits["test"]
            xte, yte, _ = _stack(cache.clip(modality, init, seed, test, pool="agg"), test)
        classes = zeroshot.class_embeddings(
            tower.model, tower.tokenizer, task.classes, task.prompts, tower.preprocess.max_text_len
        )
        acc = probes.accuracy(zeroshot.predict(tower.model, xte, classes), yte)
        return [_Result("zero-shot", acc, None, 0, {"prompts": sum(len(p) for p in task.prompts.values())})]
    if protocol == "finetune":
        from eval.downstream import finetune

        if frame_task:
            return []
        acc, val, params = finetune.finetune(task, cfg, modality, init, seed)
        return [_Result("finetune", acc, val, len(task.splits["train"]), params)]
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def run(tasks: Sequence[Task], cfg: HarnessConfig) -> list[Record]:
    """Every task in order, sharing one feature cache (tasks on the same files pay for features once)."""
    from eval.downstream.frontend_tower import load_frontend_tower
    from eval.downstream.towers import load_tower
    from train.export import read_export_meta

    frontend = read_export_meta(cfg.export)["kind"] == "avsr_frontend"
    if frontend and "finetune" in cfg.protocols:
        raise ValueError(f"{cfg.export}: the finetune protocol takes VATT exports; this one holds an AVSR front-end")

    def load(modality: str, init: str, seed: int) -> Any:
        loader = load_frontend_tower if frontend else load_tower
        return loader(cfg.export, modality, init=init, seed=seed, device=cfg.device)

    cache = FeatureCache(load, cfg.pool, cfg.progress)
    records: list[Record] = []
    offered = [t for t in tasks if cfg.tower is None or cfg.tower in t.modalities]
    if not offered:
        names = ", ".join(t.name for t in tasks)
        raise TaskError(f"--tower {cfg.tower}: none of the tasks ({names}) offers it")
    for task in tasks:
        if all(task is not t for t in offered) and len(tasks) > 1:
            log.warning("%s: left out, it offers %s, not %s", task.name, ", ".join(task.modalities), cfg.tower)
            continue
        started = time.perf_counter()
        records.extend(run_task(task, cfg, cache))
        log.info("%s: done in %.0f s", task.name, time.perf_counter() - started)
    return records
