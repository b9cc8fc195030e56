"""Several runs' metric curves in one PNG, e.g. validation WER of two initialisations at equal steps.

``python -m eval.curves runs/a runs/b --labels pretrained random --keys val_wer_av val_wer_v --out cmp.png``
reads each run directory's ``metrics.jsonl`` and draws one panel per key with one line per run. It also
prints, per key, every run's value at the steps all runs logged, and the difference of each run from the
first, so the figure's claim can be read as numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.files import OutputPathError, check_output_path
from train.metrics import MetricsLog
from train.plots import Series, draw, series


def read_series(run_dir: str | Path, key: str) -> Series:
    """``{step: value}`` of ``key`` in a run's metrics log (the last record wins for a repeated step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir}: no metrics log (no such run directory)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics log (expected a run directory of pretrain.py or train_avsr.py)")
    return series(MetricsLog(path).read(), key)  # lines that are not JSON objects are skipped there


def common_table(curves: list[Series]) -> list[tuple[int, list[float]]]:
    """The steps every run logged, with each run's value there."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [(s, [c[s] for c in curves]) for s in steps]


def plot(runs: list[str], labels: list[str], keys: list[str], out: str | Path) -> dict[str, list[Series]]:
    """Draw ``keys`` of every run into the PNG ``out``; returns the series. ``out`` is checked first
    (:func:`data.files.check_output_path`): a folder this project did not write is never replaced."""
    check_output_path(out)
    data = {k: [read_series(r, k) for r in runs] for k in keys}
    empty = [f"{r}:{k}" for k, curves in data.items() for r, c in zip(runs, curves) if not c]
    if empty:
        raise ValueError(f"no logged values for {', '.join(empty)}")
    draw([(key, list(zip(labels, data[key]))) for key in keys], out, columns=len(keys))
    return data


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.curves", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    p.add_argument("--labels", nargs="+", help="one per run (default: the directory names)")
    p.add_argument("--keys", nargs="+", required=True, help="metrics to plot, e.g. val_wer_av")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    try:
        if len(labels) != len(args.runs):
            raise ValueError(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
        try:
            check_output_path(args.out)
        except OutputPathError as exc:
            raise OutputPathError(f"--out: {exc}") from None
        data = plot(args.runs, labels, args.keys, args.out)
    except (OSError, ValueError) as exc:  # OutputPathError is a ValueError
        sys.exit(f"eval.curves: {_first_line(exc)}")
    for key, curves in data.items():
        print(f"{key}: step | " + " | ".join(labels) + (f" | {labels[1]} - {labels[0]}" if len(labels) == 2 else ""))
        for step, values in common_table(curves):
            diff = f" | {values[1] - values[0]:+.2f}" if len(values) == 2 else ""
            print(f"  {step} | " + " | ".join(f"{v:.2f}" for v in values) + diff)
    print(f"wrote {args.out}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    main(sys.argv[1:])
