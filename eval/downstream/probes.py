"""Probe protocols on cached features: linear probe, few-shot, k-NN, and the metrics they report.

Everything takes float features ``(N, D)`` and int64 labels ``(N,)`` on the CPU and is deterministic for
a seed; frame-level tasks are more rows (:func:`flatten_frames`). The linear probe follows HEAR's predictor
selection (Turian et al., 2022, "HEAR: Holistic Evaluation of Audio Representations", PMLR 176): a grid of
learning rates and weight decays, each point trained with early stopping on validation accuracy, and the
point best on validation wins. Our predictor is one linear layer (HEAR also searches hidden layers), the
usual linear-probe protocol.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRS: tuple[float, ...] = (1e-3, 1e-2)
WDS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
MAX_EPOCHS = 500  # full-batch steps per grid point
PATIENCE = 50  # steps without a better validation accuracy before a grid point stops
KNN_KS: tuple[int, ...] = (1, 5, 10, 20)
QUERY_CHUNK = 1024  # k-NN queries scored at once: (chunk, N_train) similarities, never (N_query, N_train)


# metrics


def accuracy(pred: Tensor, y: Tensor) -> float:
    """Percentage of ``pred`` equal to ``y``."""
    if pred.shape != y.shape or y.numel() == 0:
        raise ValueError(
            f"accuracy needs two non-empty label tensors of one shape, got {tuple(pred.shape)} and {tuple(y.shape)}"
        )
    return 100.0 * (pred == y).double().mean().item()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of a score over seeds; the deviation of one value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def flatten_frames(features: Sequence[Tensor], labels: Sequence[Tensor], ignore: int = -1) -> tuple[Tensor, Tensor]:
    """Stack per-clip frames ``(T_i, D)`` and their labels ``(T_i,)`` into rows, dropping frames labelled
    ``ignore`` (padding, unlabelled frames), so frame tasks use the same probes as clip tasks."""
    if len(features) != len(labels) or not features:
        raise ValueError(
            f"flatten_frames needs one label sequence per feature sequence, got {len(features)} "
            f"feature and {len(labels)} label sequences"
        )
    for i, (f, l) in enumerate(zip(features, labels)):
        if f.dim() != 2 or l.dim() != 1 or f.shape[0] != l.shape[0]:
            raise ValueError(f"sequence {i}: features {tuple(f.shape)} and labels {tuple(l.shape)} do not match")
    x, y = torch.cat(list(features)), torch.cat(list(labels)).long()
    keep = y != ignore
    return x[keep], y[keep]


def _check(x: Tensor, y: Tensor, num_classes: int, split: str) -> None:
    if x.dim() != 2 or not x.is_floating_point() or y.dim() != 1 or y.dtype != torch.int64:
        raise ValueError(
            f"{split}: need float features (N, D) and int64 labels (N,), got {x.dtype} "
            f"{tuple(x.shape)} and {y.dtype} {tuple(y.shape)}"
        )
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{split}: {x.shape[0]} feature rows and {y.shape[0]} labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{split}: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


# linear probe


def standardization(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and (population) standard deviation of the training split, applied to every split.

    A constant feature (deviation within rounding of zero) gets deviation 1, so it maps to 0 instead of
    blowing up on another split.
    """
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    constant = std <= 10 * torch.finfo(x.dtype).eps * mean.abs()
    return mean, torch.where(constant, torch.ones_like(std), std)


@dataclass
class LinearProbe:
    """A fitted multinomial logistic regression on standardised features: ``((x - mean) / std) W^T + b``.

    ``steps`` is the number of optimiser steps behind the kept state; ``val_accuracy`` is its validation
    accuracy (None when fitted without a validation split).
    """

    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    steps: int
    val_accuracy: float | None = None

    def logits(self, x: Tensor) -> Tensor:
        x = x.to(self.weight.dtype)
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias  # (N, C)

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x).argmax(1)


@dataclass
class ProbeResult:
    """The grid point chosen on validation accuracy and its probe; ``grid`` maps every (lr, wd) to its
    validation accuracy."""

    probe: LinearProbe
    lr: float
    wd: float
    val_accuracy: float
    grid: dict[tuple[float, float], float] = field(default_factory=dict)

    @property
    def weight(self) -> Tensor:
        return self.probe.weight

    @property
    def bias(self) -> Tensor:
        return self.probe.bias

    def logits(self, x: Tensor) -> Tensor:
        return self.probe.logits(x)

    def predict(self, x: Tensor) -> Tensor:
        return self.probe.predict(x)


def fit_logistic(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    wd: float,
    *,
    lr: float,
    steps: int,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    patience: int = PATIENCE,
    seed: int = 0,
) -> LinearProbe:
    """One grid point: minimise ``mean cross-entropy + (wd / 2) ||W||^2`` (bias not penalised) with
    full-batch Adam on features standardised with the statistics of ``x``.

    Without a validation split it runs all ``steps`` and keeps the last state. With one, it keeps the
    state of best validation accuracy (the earliest among equals) and stops ``patience`` steps after it.
    """
    _check(x, y, num_classes, "train")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if (val_x is None) != (val_y is None):
        raise ValueError("fit_logistic needs both val_x and val_y, or neither")
    if val_x is not None:
        _check(val_x, val_y, num_classes, "val")
    mean, std = standardization(x)
    z = (x - mean) / std  # (N, D)
    z_val = None if val_x is None else (val_x.to(x.dtype) - mean) / std

    # nn.Linear without its default init, which would draw from the global generator; ours is seeded.
    linear = nn.utils.skip_init(nn.Linear, x.shape[1], num_classes, dtype=x.dtype)
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(x.shape[1])
    with torch.no_grad():
        linear.weight.uniform_(-bound, bound, generator=generator)
        linear.bias.zero_()
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)

    best_acc, best_step, best_state = -1.0, 0, None
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(z), y) + 0.5 * wd * linear.weight.square().sum()
        loss.backward()
        optimizer.step()
        if z_val is None:
            continue
        with torch.no_grad():
            acc = accuracy(linear(z_val).argmax(1), val_y)
        if acc > best_acc:
            best_acc, best_step = acc, step
            best_state = (linear.weight.detach().clone(), linear.bias.detach().clone())
        elif step - best_step >= patience:
            break

    if best_state is None:
        return LinearProbe(mean, std, linear.weight.detach().clone(), linear.bias.detach().clone(), steps)
    return LinearProbe(mean, std, *best_state, steps=best_step, val_accuracy=best_acc)


def fit_linear(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    *,
    lrs: Sequence[float] = LRS,
    wds: Sequence[float] = WDS,
    max_epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
    seed: int = 0,
) -> ProbeResult:
    """HEAR-style linear probe (Turian et al., 2022): fit every (lr, wd) of the grid with early stopping on
    validation accuracy and keep the best on validation; a tie goes to the stronger weight decay, then to
    the learning rate listed first."""
    if not lrs or not wds:
        raise ValueError("fit_linear needs at least one learning rate and one weight decay")
    points = [(lr, wd) for wd in sorted(wds, reverse=True) for lr in lrs]  # strongest first: later must beat it
    with _one_thread():
        probes = _fit_grid(train_x, train_y, val_x, val_y, num_classes, points, max_epochs, patience, seed)
    grid = {pt: probe.val_accuracy for pt, probe in zip(points, probes)}
    best = max(range(len(points)), key=lambda i: (probes[i].val_accuracy, -i))  # first among equals
    lr, wd = points[best]
    return ProbeResult(probes[best], lr, wd, probes[best].val_accuracy, grid)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Probes are small matrix products: a second thread's synchronisation costs more than it saves, and
    on a machine busy with anything else it costs several times the work (measured: 3.4 s on two threads
    against 2.0 s on one for the default grid on 244 x 512 features)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_grid(
    x: Tensor,
    y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    points: list[tuple[float, float]],
    steps: int,
    patience: int,
    seed: int,
) -> list[LinearProbe]:
    """:func:`fit_logistic` at every (lr, wd) of ``points`` at once: the G probes are independent (each
    has its own parameters, Adam state and early stopping), but one batched forward and backward serves
    them all, which costs about what one probe costs (a probe is far too small to keep a CPU busy)."""
    _check(x, y, num_classes, "train")
    _check(val_x, val_y, num_classes, "val")
    mean, std = standardization(x)
    z = (x - mean) / std  # (N, D)
    z_val = (val_x.to(x.dtype) - mean) / std
    G, D, C = len(points), x.shape[1], num_classes
    weights, biases, groups = [], [], []
    for lr, _ in points:  # each point starts where fit_logistic would start it
        generator = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(D)
        w = nn.Parameter(torch.empty(C, D, dtype=x.dtype).uniform_(-bound, bound, generator=generator))
        b = nn.Parameter(torch.zeros(C, dtype=x.dtype))
        weights.append(w)
        biases.append(b)
        groups.append({"params": [w, b], "lr": lr})
    optimizer = torch.optim.Adam(groups)
    wd = torch.tensor([p[1] for p in points], dtype=x.dtype)  # (G,)
    targets = y.repeat(G)  # (G * N,)

    best_acc = [-1.0] * G
    best_step = [0] * G
    best_state: list[tuple[Tensor, Tensor] | None] = [None] * G
    active = list(range(G))
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        W, B = torch.stack(weights), torch.stack(biases)  # (G, C, D), (G, C)
        logits = torch.einsum("nd,gcd->gnc", z, W) + B[:, None, :]  # (G, N, C)
        ce = F.cross_entropy(logits.reshape(G * len(y), C), targets, reduction="none").view(G, -1).mean(1)
        loss = (ce + 0.5 * wd * W.square().sum(dim=(1, 2))).sum()  # each point's gradient is its own term's
        loss.backward()
        for g in range(G):  # a stopped point takes no more steps
            if g not in active:
                weights[g].grad = biases[g].grad = None
        optimizer.step()
        with torch.no_grad():
            W, B = torch.stack(weights), torch.stack(biases)
            pred = (torch.einsum("nd,gcd->gnc", z_val, W) + B[:, None, :]).argmax(2)  # (G, N_val)
        for g in list(active):
            acc = accuracy(pred[g], val_y)
            if acc > best_acc[g]:
                best_acc[g], best_step[g] = acc, step
                best_state[g] = (weights[g].detach().clone(), biases[g].detach().clone())
            elif step - best_step[g] >= patience:
                active.remove(g)
        if not active:
            break
    return [LinearProbe(mean, std, *best_state[g], steps=best_step[g], val_accuracy=best_acc[g]) for g in range(G)]


# few-shot


def few_shot_indices(labels: Tensor, shots: int, seed: int, *, num_classes: int | None = None) -> Tensor:
    """Indices of exactly ``shots`` training examples per class, drawn uniformly without replacement, in
    ascending order; the same for a seed. Every class in ``labels`` counts, and every class below
    ``num_classes`` when given, so a class missing from the training split is an error too."""
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    present = torch.unique(labels).tolist()
    classes = sorted(set(present) | set(range(num_classes or 0)))
    if not classes:
        raise ValueError("few_shot_indices needs at least one label")
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        if len(members) < shots:
            raise ValueError(f"class {c} has {len(members)} training examples, fewer than shots={shots}")
        picked.append(members[torch.randperm(len(members), generator=generator)[:shots]])
    return torch.cat(picked).sort().values


# k-NN


def _neighbours(train_x: Tensor, query_x: Tensor, k: int, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities and indices of the ``k`` nearest training rows of every query, nearest first."""
    train_n = F.normalize(train_x, dim=1)
    query_n = F.normalize(query_x.to(train_x.dtype), dim=1)
    sims, idx = [torch.empty(0, k, dtype=train_n.dtype)], [torch.empty(0, k, dtype=torch.int64)]
    for start in range(0, len(query_n), chunk_size):
        s, i = (query_n[start : start + chunk_size] @ train_n.T).topk(k, dim=1)  # (chunk, k)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def _vote(sims: Tensor, neighbour_labels: Tensor, num_classes: int) -> Tensor:
    """Class with the largest sum of similarities among the neighbours present; among equal sums, the class
    of the nearest neighbour (the one that appears first in rank order)."""
    q, k = sims.shape
    scores = torch.zeros(q, num_classes, dtype=sims.dtype).scatter_add_(1, neighbour_labels, sims)
    ranks = torch.arange(k).expand(q, k)
    first = torch.full((q, num_classes), k).scatter_reduce_(1, neighbour_labels, ranks, "amin")  # (Q, C)
    scores = scores.masked_fill(first == k, -math.inf)  # a class with no neighbour cannot win
    tied = scores == scores.max(1, keepdim=True).values
    return torch.where(tied, first, k).argmin(1)


def knn_predict(
    train_x: Tensor, train_y: Tensor, query_x: Tensor, k: int, num_classes: int, *, chunk_size: int = QUERY_CHUNK
) -> Tensor:
    """k-NN classification with cosine similarity on L2-normalised features and a similarity-weighted vote
    (ties to the nearest neighbour's class); ``k`` is capped at the training size."""
    _check(train_x, train_y, num_classes, "train")
    k = min(k, len(train_x))
    sims, idx = _neighbours(train_x, query_x, k, chunk_size)
    return _vote(sims, train_y[idx], num_classes)


@dataclass
class KnnResult:
    """The ``k`` chosen on validation accuracy (``grid`` maps every k to it) and the training set it votes
    with."""

    k: int
    val_accuracy: float
    grid: dict[int, float]
    train_x: Tensor = field(repr=False)
    train_y: Tensor = field(repr=False)
    num_classes: int

    def predict(self, x: Tensor, *, chunk_size: int = QUERY_CHUNK) -> Tensor:
        return knn_predict(self.train_x, self.train_y, x, self.k, self.num_classes, chunk_size=chunk_size)


def fit_knn(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    num_classes: int,
    ks: Sequence[int] = KNN_KS,
    *,
    chunk_size: int = QUERY_CHUNK,
) -> KnnResult:
    """Pick k on validation accuracy (a tie goes to the smaller k). The neighbours are searched once, for
    the largest k, and every smaller k votes with a prefix of them."""
    _check(train_x, train_y, num_classes, "train")
    _check(val_x, val_y, num_classes, "val")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {tuple(ks)}")
    sims, idx = _neighbours(train_x, val_x, min(max(ks), len(train_x)), chunk_size)
    labels = train_y[idx]  # (N_val, k_max)
    grid = {k: accuracy(_vote(sims[:, :k], labels[:, :k], num_classes), val_y) for k in sorted(set(ks))}
    best = max(grid, key=lambda k: (grid[k], -k))
    return KnnResult(best, grid[best], grid, train_x, train_y, num_classes)
