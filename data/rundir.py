"""Run directories, atomic file writes, metrics logs and the one logging format.

A run directory holds the resolved config (``config.yaml``), ``metrics.jsonl``, training states under
``states/`` and an export under ``export/``. Everything written here goes to a temporary file first
and is renamed into place, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, main_process: bool = True) -> None:
    """Configure the root logger once, for scripts; libraries only call ``logging.getLogger``."""
    logging.basicConfig(
        level=level if main_process else logging.WARNING, format=LOG_FORMAT, datefmt="%H:%M:%S", force=True
    )


def cpu_threads(requested: int, processes: int) -> int:
    """Torch threads for a process on a CPU: ``requested`` if positive, else this machine's cores shared out.

    ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` unless told ``--cpu``, which leaves one core of
    a laptop idle during training; a script calls ``torch.set_num_threads(cpu_threads(...))`` instead.
    ``processes`` counts the training processes on this machine (``LOCAL_WORLD_SIZE`` when set).
    """
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    return max(1, cores // max(1, local))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def new_run_dir(output_dir: str | None, root: str | Path = "runs", prefix: str = "run") -> Path:
    """``output_dir`` if given, else a fresh timestamped directory under ``root``."""
    if output_dir:
        path = Path(output_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{prefix}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / f"{prefix}-{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; each line is flushed as it is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the training loop checks between steps.

    The loop then saves a state and exits cleanly; a second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.getLogger(__name__).warning("signal %d received: saving a state and stopping", signum)
        self.requested = True


class StateManager:
    """Accelerate training states under ``run_dir/states/step-XXXXXXXX``, keeping the newest ``keep``.

    A state is written to a hidden sibling and renamed into place once every process has written its
    part, so a crash never leaves a half state under a real name. :meth:`resume` loads the newest state
    that loads; a broken one is reported and the previous one is tried.
    """

    def __init__(self, run_dir: str | Path, accelerator: Any, keep: int = 2) -> None:
        self.root = Path(run_dir) / "states"
        self.accelerator = accelerator
        self.keep = max(1, keep)

    def states(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
                found.append((int(p.name[5:]), p))
        return sorted(found)

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".step-{step:08d}.partial"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "step.json").write_text(json.dumps({"step": step}))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in self.states()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self) -> int:
        """Load the newest loadable state; returns its step (0 when there is none)."""
        log = logging.getLogger(__name__)
        for _, path in reversed(self.states()):
            try:
                recorded = json.loads((path / "step.json").read_text())["step"]
                self.accelerator.load_state(str(path))
            except Exception as exc:  # noqa: BLE001 - any failure means: fall back to the previous state
                log.warning(
                    "state %s failed to load (%s: %s); trying the previous one",
                    path,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                continue
            log.info("resumed from %s (step %d)", path, recorded)
            return int(recorded)
        return 0


def plot_curves(records: list[dict[str, Any]], out_png: str | Path, keys: list[str] | None = None) -> Path:
    """Plot every numeric series of the metrics log against ``step`` into one PNG (one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        if "step" not in rec:
            continue
        for k, v in rec.items():
            if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if keys is not None and k not in keys:
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(rec["step"])
            ys.append(float(v))
    names = sorted(series)
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(out_png)
