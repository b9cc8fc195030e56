"""Downstream results as a document: per-seed records, their summary, a markdown table and a PNG.

A record is one measurement: a task, the tower, the protocol, the initialisation ("pretrained" or
"random"), the seed and the accuracy on the test split (with the validation accuracy and the chosen
hyperparameters). The summary groups records by (task, tower, protocol) and puts the pretrained and the
random-init figures side by side with chance, so a task where pretraining does not help shows at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data.files import atomic_path, atomic_write_json, atomic_write_text
from eval.downstream.probes import mean_std

INITS = ("pretrained", "random")


@dataclass
class Record:
    """One measurement (a seed of one protocol of one task with one initialisation)."""

    task: str
    tower: str
    protocol: str
    init: str
    seed: int
    accuracy: float  # percent, test split (frames for frame-level tasks)
    val_accuracy: float | None
    chance: float  # percent: the most frequent test class
    num_train: int
    num_test: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class SummaryRow:
    task: str
    tower: str
    protocol: str
    chance: float
    stats: dict[str, tuple[float, float, int]]  # init -> (mean, std, seeds)

    def delta(self) -> float | None:
        """Pretrained mean minus random-init mean, in points (None when one is missing)."""
        if all(i in self.stats for i in INITS):
            return self.stats["pretrained"][0] - self.stats["random"][0]
        return None

    def separation(self) -> float | None:
        """``delta`` in units of the larger of the two standard deviations (None if both are zero)."""
        d = self.delta()
        spread = max((self.stats[i][1] for i in INITS if i in self.stats), default=0.0)
        return d / spread if d is not None and spread > 0 else None


def summarise(records: Sequence[Record]) -> list[SummaryRow]:
    """One row per (task, tower, protocol) in first-seen order, with each initialisation's mean, std and
    number of seeds."""
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    chance: dict[tuple[str, str, str], float] = {}
    for r in records:
        key = (r.task, r.tower, r.protocol)
        groups.setdefault(key, {}).setdefault(r.init, []).append(r.accuracy)
        chance[key] = r.chance
    rows = []
    for key, by_init in groups.items():
        stats = {init: (*mean_std(values), len(values)) for init, values in by_init.items()}
        rows.append(SummaryRow(*key, chance=chance[key], stats=stats))
    return rows


def _cell(stats: tuple[float, float, int] | None) -> str:
    return "-" if stats is None else f"{stats[0]:.1f} ± {stats[1]:.1f}"


def markdown(rows: Sequence[SummaryRow]) -> str:
    """The summary as a markdown table: accuracy (%) as mean ± standard deviation over seeds."""
    lines = [
        "| task | tower | protocol | chance | pretrained | random init | difference |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        d = row.delta()
        diff = "-" if d is None else f"{d:+.1f}"
        cells = [_cell(row.stats.get(i)) for i in INITS]
        lines.append(f"| {row.task} | {row.tower} | {row.protocol} | {row.chance:.1f} | {' | '.join(cells)} | {diff} |")
    seeds = sorted({n for row in rows for (_, _, n) in row.stats.values()})
    lines.append("")
    lines.append(f"Accuracy (%) on the test split, mean ± standard deviation over {'/'.join(map(str, seeds))} seeds.")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[SummaryRow], out_png: str | Path, title: str = "") -> Path:
    """One panel per (task, tower): for each protocol a pretrained and a random-init bar with error bars
    (one standard deviation over seeds), and chance as a dashed line, so the tasks where pretraining
    helps and those where it does not show at a glance."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[SummaryRow]] = {}
    for row in rows:
        panels.setdefault((row.task, row.tower), []).append(row)
    cols = min(4, max(1, len(panels)))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows + 0.6), squeeze=False)
    colours = {"pretrained": "#1f77b4", "random": "#bbbbbb"}
    width = 0.38
    for ax, ((task, tower), group) in zip(axes.flat, panels.items()):
        for j, init in enumerate(INITS):
            xs = [i + (j - 0.5) * width for i, r in enumerate(group) if init in r.stats]
            stats = [r.stats[init] for r in group if init in r.stats]
            if xs:
                ax.bar(xs, [m for m, _, _ in stats], width, yerr=[s for _, s, _ in stats], capsize=2,
                       color=colours[init], label=init)  # fmt: skip
        ax.axhline(group[0].chance, color="#d62728", ls="--", lw=1.2, label="chance")
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels([r.protocol for r in group], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_title(f"{task} ({tower})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(out_png)


def write_json(records: Sequence[Record], rows: Sequence[SummaryRow], out: str | Path, meta: dict[str, Any]) -> None:
    """Records, summary and what produced them (export, fingerprint, command), atomically."""
    summary = [
        {**{k: v for k, v in asdict(row).items() if k != "stats"},
         **{init: {"mean": s[0], "std": s[1], "seeds": s[2]} for init, s in row.stats.items()},
         "difference": row.delta()}
        for row in rows
    ]  # fmt: skip
    atomic_write_json(out, {"meta": meta, "summary": summary, "records": [asdict(r) for r in records]})


def read_json(path: str | Path) -> tuple[list[Record], dict[str, Any]]:
    """Records and meta of a results file written by :func:`write_json` (to redraw or merge tables)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Record(**r) for r in data["records"]], data.get("meta", {})


def write_markdown(rows: Sequence[SummaryRow], out: str | Path) -> None:
    atomic_write_text(out, markdown(rows))
