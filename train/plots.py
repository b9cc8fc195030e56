"""Metric curves as PNG: a run's ``curves.png`` and the comparison figures of ``eval.curves``.

``curves.png`` has the panels people look at, the same for every launcher: the loss terms, the
learning rate, throughput, and the evaluation (retrieval R@1 / R@10, or WER), each over steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data.files import atomic_path

Series = dict[int, float]
# A panel: its title and its lines, each a label and a series.
Panel = tuple[str, list[tuple[str, Series]]]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series(records: list[dict[str, Any]], key: str) -> Series:
    """``{step: value}`` of ``key`` over the records of a metrics log (the last record of a step wins)."""
    return {int(r["step"]): float(r[key]) for r in records if _number(r.get("step")) and _number(r.get(key))}


def _is_eval(key: str) -> bool:
    return "/R@" in key or key.startswith("val_wer") or key.endswith("_accuracy")


# Curated panels: which keys of the training and evaluation records each one draws.
CURATED: list[tuple[str, Callable[[str], bool]]] = [
    ("loss terms", lambda k: k not in ("step", "lr") and not k.endswith("_per_s") and not _is_eval(k)),
    ("learning rate", lambda k: k == "lr"),
    ("throughput (per s)", lambda k: k.endswith("_per_s") and k != "steps_per_s"),
    ("retrieval R@1 / R@10 (%)", lambda k: k.endswith("/R@1") or k.endswith("/R@10")),
    ("WER (%)", lambda k: k.startswith("val_wer_")),
    ("accuracy (%)", lambda k: k.endswith("_accuracy")),
]


def curated_panels(records: list[dict[str, Any]]) -> list[Panel]:
    """The panels of ``curves.png`` that have data: training keys from the records that carry ``lr``,
    evaluation keys from the others (counts such as ``skipped_clips`` are left out)."""
    train = [r for r in records if "lr" in r]
    evals = [r for r in records if "lr" not in r and any(_is_eval(k) for k in r)]
    panels = []
    for title, wanted in CURATED:
        source = evals if title.startswith(("retrieval", "WER", "accuracy")) else train
        keys = sorted({k for r in source for k in r if wanted(k) and _number(r[k])})
        lines = [(k, series(source, k)) for k in keys]
        if any(s for _, s in lines):
            panels.append((title, lines))
    return panels


def draw(panels: list[Panel], out_png: str | Path, columns: int = 3) -> Path:
    """One panel per (title, lines), ``columns`` to a row, written atomically to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(columns, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels):
        for label, s in lines:
            steps = sorted(s)
            ax.plot(steps, [s[t] for t in steps], marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_curves(records: list[dict[str, Any]], out_png: str | Path) -> Path:
    """A run's ``curves.png`` (:func:`curated_panels`)."""
    return draw(curated_panels(records), out_png)
