"""Run directories, atomic file writes, metrics logs and the one logging format.

A run directory holds the resolved config (``config.yaml``), ``metrics.jsonl``, training states under
``states/`` and an export under ``export/``. Everything written here goes to a temporary file first
and is renamed into place, so a crash never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

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


# Folders this project writes carry this file; an existing folder is only ever replaced when it has it.
OUTPUT_MARKER = ".vatt-avsr-output"


class OutputPathError(ValueError):
    """An output path that would replace something this project did not write."""


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is a folder this project wrote (it carries :data:`OUTPUT_MARKER`)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def mark_ours(path: str | Path) -> None:
    (Path(path) / OUTPUT_MARKER).write_text("written by vatt-avsr; its next output to this path may replace it\n")


def check_output_path(path: str | Path, kind: Literal["file", "dir", "any"] = "file") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` may receive a new output of ``kind``.

    A missing path may; an existing file may receive a file (the user named it); an existing folder
    may receive a folder only when this project wrote it (:func:`is_ours`), and never a file (a PNG
    does not replace an index by a slip of the path). Commands call it before the work whose result
    goes there, so a wrong path fails at once rather than after the work. ``kind="any"`` checks only
    what holds for both.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return path
    if path.is_dir():
        if not is_ours(path):
            raise OutputPathError(
                f"{path} is an existing folder that this project did not write; refusing to replace it "
                "(choose another output path)"
            )
        if kind == "file":
            raise OutputPathError(f"{path} is an existing output folder; refusing to replace it with a file")
    elif kind == "dir":
        raise OutputPathError(f"{path} is an existing file; refusing to replace it with a folder")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(path: Path) -> None:
    """Remove the temp siblings of ``path`` that a killed earlier write of this project left behind.

    They are named ``.<name>.tmp-<pid>-...`` and ``.<name>.old-<pid>-...``; one whose process still
    runs is another write in progress and stays.
    """
    if not path.parent.is_dir():
        return
    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-"
        for p in path.parent.iterdir():
            if not p.name.startswith(prefix):
                continue
            pid = p.name[len(prefix) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(p)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush ``path`` (a file, or a folder with everything in it) to disk."""
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        if not p.is_symlink():
            _fsync(p)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path`` (file or folder).

    What was written is fsynced before the rename, so a crash leaves the old output or the new one,
    never a torn one. A folder written here gets :data:`OUTPUT_MARKER`; an existing folder at ``path``
    is only replaced when it has that marker (:func:`check_output_path`). Temp names that a killed
    earlier write left beside ``path`` are removed on the next write to it.
    """
    path = Path(path)
    check_output_path(path, "any")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    tmp = tmp_dir / path.name
    try:
        yield tmp
        if tmp.is_dir():
            mark_ours(tmp)
        check_output_path(path, "dir" if tmp.is_dir() else "file")
        fsync_tree(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)  # the rename itself
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names it and what to do."""


# What a run writes into its directory; ``overwrite=true`` removes these and nothing else.
RUN_OUTPUTS = (
    "config.yaml",
    "metrics.jsonl",
    "metrics_final.json",
    "curves.png",
    "states",
    "export",
    "index",
    "tokenizer.model",
    "units.txt",
    "lengths.json",
)
# Keys that may differ between a run and its resumption: they change how it is watched, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "resume",
        "overwrite",
        "log_every",
        "save_every",
        "keep_states",
        "cpu_threads",
        "data.num_workers",
        "preprocess.length_cache",  # a cache of utterance lengths; filled in beside the run by default
    }
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def open_run_dir(
    output_dir: str,
    config: dict[str, Any],
    resume: str = "auto",
    overwrite: bool = False,
    root: str | Path = "runs",
    prefix: str = "run",
) -> Path:
    """The run directory for a run with the resolved ``config`` (plain data), created or checked.

    Empty ``output_dir``: a fresh timestamped directory under ``root``. An existing folder must be empty
    or a run directory of this project; one holding a run continues it (``resume=auto``) only when its
    config matches apart from :data:`RESUMABLE_CHANGES`, else it is an error, unless ``overwrite``
    removes the earlier run's outputs (:data:`RUN_OUTPUTS`, nothing else) first.
    """
    if output_dir:
        path = Path(output_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{prefix}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / f"{prefix}-{stamp}-{n}"
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir {path} is a file; expected a folder for the run")
    if path.is_dir() and any(path.iterdir()) and not is_ours(path):
        raise RunDirError(
            f"output_dir {path} is a non-empty folder that is not a run directory of this project; "
            "refusing to write into it (choose a new output_dir)"
        )
    saved = path / "config.yaml"
    if saved.is_file():
        if overwrite:
            for name in RUN_OUTPUTS:
                _remove(path / name)
        elif resume == "never":
            raise RunDirError(
                f"output_dir {path} already holds a run and resume=never; choose a new output_dir, "
                "or pass overwrite=true to replace that run"
            )
        else:
            import yaml

            try:
                before = _flatten(yaml.safe_load(saved.read_text()) or {})
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:
                raise RunDirError(f"{saved} is not a readable config ({type(exc).__name__})") from None
            now = _flatten(config)
            changed = sorted(
                k for k in before.keys() | now.keys() if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)
            )
            if changed:
                shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
                more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
                raise RunDirError(
                    f"output_dir {path} holds a run with another config ({shown}{more}); resume it with the "
                    "same config, choose a new output_dir, or pass overwrite=true to replace it"
                )
    path.mkdir(parents=True, exist_ok=True)
    mark_ours(path)
    return path


def open_shared_run_dir(accelerator: Any, output_dir: str, config: dict[str, Any], **kwargs: Any) -> Path:
    """:func:`open_run_dir` on the main process, its answer (or its :class:`RunDirError`) on every process."""
    from accelerate.utils import broadcast_object_list

    opened: list[str | None] = [None, None]
    if accelerator.is_main_process:
        try:
            opened[0] = str(open_run_dir(output_dir, config, **kwargs))
        except RunDirError as exc:
            opened[1] = str(exc)
    path, error = broadcast_object_list(opened)
    if error:
        raise RunDirError(error)
    return Path(path)


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; each line is flushed as it is written.

    A line torn by a kill is skipped when reading; :meth:`rewind` drops what a resumed run will
    write again, so a run killed and resumed logs every step once.
    """

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
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if isinstance(rec, dict):
                records.append(rec)
        return records

    def rewind(self, step: int) -> None:
        """Keep only the records up to ``step`` (the step a run starts or resumes from)."""
        if not self.path.exists():
            return
        kept = [r for r in self.read() if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag the training loop checks between steps.

    The loop then saves a state and exits cleanly; a second Ctrl-C interrupts at once. With several
    processes the flag is agreed among them (:func:`agree`), so a signal to any one stops all of them
    at the same step.
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


def agree(accelerator: Any, stop: StopRequest, skip: bool, failures: Any) -> tuple[bool, bool]:
    """(stop, skip) as every process sees them, and the bad-media budget judged on all processes' counts.

    Called once per micro-batch by every process: a stop asked of any process stops all, a batch that
    failed entirely on any process is skipped by all (a process cannot sit out a step that the others'
    gradient reduction waits for), and :class:`~data.collate.FailureTracker` checks the summed counts.
    """
    if accelerator.num_processes == 1:
        failures.check()
        return stop.requested, skip
    import torch

    flags = torch.tensor(
        [float(stop.requested), float(skip), float(failures.attempts), float(failures.failed)],
        dtype=torch.float64,
        device=accelerator.device,
    )
    flags = accelerator.reduce(flags, "sum")
    failures.check(totals=(int(flags[2]), int(flags[3])))
    return bool(flags[0] > 0), bool(flags[1] > 0)


def failure_totals(accelerator: Any, failures: Any) -> tuple[int, int]:
    """(attempts, failed) summed over every process."""
    if accelerator.num_processes == 1:
        return failures.attempts, failures.failed
    import torch

    t = torch.tensor([float(failures.attempts), float(failures.failed)], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, "sum")
    return int(t[0]), int(t[1])


class StateError(RuntimeError):
    """A training state that is refused or fails to load; the message names it."""


# What a state directory may hold: Accelerate's weights (safetensors), optimizer and RNG tensors (loaded
# with weights_only=True), and JSON. Anything else, a pickle of arbitrary objects above all, is refused.
_STATE_FILES = re.compile(
    r"(model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin|random_states_\d+\.pkl|custom_\d+\.json|step\.json"
    + "|"
    + re.escape(OUTPUT_MARKER)
    + ")"
)


class StateManager:
    """Training states under ``run_dir/states/step-XXXXXXXX``, keeping the newest ``keep``.

    A state holds Accelerate's model (safetensors), optimizer and RNG files, plus ``custom`` objects
    (name -> object with ``state_dict``/``load_state_dict`` of JSON data, e.g. the LR scheduler) in
    ``custom_<rank>.json``; nothing in it is unpickled beyond tensors. It is written to a hidden sibling
    and renamed into place once every process has written its part, so a kill never leaves a half
    state under a real name. :meth:`resume` loads the newest state that loads, restoring the model and
    optimizer as they were when one fails part-way; states are ordered by when they were written, so
    rotation keeps this run's newest even when an older run left higher step numbers.
    """

    def __init__(
        self, run_dir: str | Path, accelerator: Any, keep: int = 2, custom: dict[str, Any] | None = None
    ) -> None:
        self.root = Path(run_dir) / "states"
        self.accelerator = accelerator
        self.keep = max(1, keep)
        self.custom = dict(custom or {})

    def states(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete state, oldest written first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
                try:
                    serial = int(json.loads((p / "step.json").read_text()).get("serial", 0))
                except (OSError, ValueError, AttributeError):
                    serial = -1
                found.append((serial, int(p.name[5:]), p))
        return [(step, p) for _, step, p in sorted(found)]

    def _next_serial(self) -> int:
        serials = [0]
        for _, p in self.states():
            try:
                serials.append(int(json.loads((p / "step.json").read_text())["serial"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return max(serials) + 1

    def save(self, step: int) -> Path:
        acc = self.accelerator
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".step-{step:08d}.partial"
        if acc.is_main_process:
            self.clean_partials()
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        custom = {name: obj.state_dict() for name, obj in self.custom.items()}
        (tmp / f"custom_{acc.process_index}.json").write_text(json.dumps(custom))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "step.json").write_text(json.dumps({"step": step, "serial": self._next_serial()}))
            fsync_tree(tmp)
            if final.exists():
                old = self.root / f".step-{step:08d}.old"
                _remove(old)
                os.replace(final, old)
                os.replace(tmp, final)
                _remove(old)
            else:
                os.replace(tmp, final)
            _fsync(self.root)
            for _, stale in self.states()[: -self.keep]:
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def clean_partials(self) -> None:
        """Remove the hidden half-written states that a kill during a save left behind."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".step-"):
                    _remove(p)

    def check(self, path: Path) -> int:
        """The step of the state at ``path``; :class:`StateError` if it holds anything but known files."""
        unknown = sorted(p.name for p in path.iterdir() if not _STATE_FILES.fullmatch(p.name))
        if unknown:
            raise StateError(
                f"state {path} holds unexpected file(s) {unknown[:3]}; refusing to load it "
                "(a state holds only safetensors, JSON and tensor files)"
            )
        try:
            step = json.loads((path / "step.json").read_text())["step"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"state {path}: step.json is missing or unreadable ({type(exc).__name__})") from None
        if not isinstance(step, int) or step < 0:
            raise StateError(f"state {path}: step.json has step {step!r}; expected a non-negative integer")
        return step

    def _load(self, path: Path) -> int:
        from accelerate.utils import load as weights_only_load

        step = self.check(path)
        acc = self.accelerator
        # Accelerate swallows a failing RNG file and resumes with other random numbers: load it first.
        for name in (f"random_states_{acc.process_index}.pkl", "optimizer.bin"):
            try:
                weights_only_load(path / name, map_location="cpu")
            except pickle.UnpicklingError as exc:
                if "weights only" in str(exc).lower():
                    raise StateError(f"state {path}: {name} holds more than tensors; refusing to load it") from None
                raise
        custom_file = path / f"custom_{acc.process_index}.json"
        custom = json.loads(custom_file.read_text()) if custom_file.exists() else {}
        missing = sorted(set(self.custom) - set(custom))
        if missing:
            raise StateError(f"state {path} has no saved {missing[0]}")
        acc.load_state(str(path))
        for name, obj in self.custom.items():
            obj.load_state_dict(custom[name])
        return step

    def resume(self) -> int:
        """Load the newest loadable state; returns its step (0 when there is none).

        A state that fails to load is reported and the previous one tried; a refused state (anything
        but tensors and JSON in it) stops the run with :class:`StateError`. Whatever a failed load
        changed in the models, optimizers and custom objects is put back first.
        """
        log = logging.getLogger(__name__)
        if self.accelerator.is_main_process:
            self.clean_partials()
        self.accelerator.wait_for_everyone()
        for _, path in reversed(self.states()):
            self.check(path)  # refused outright, before anything is read from it
            backup = self._snapshot()
            try:
                recorded = self._load(path)
            except StateError:
                self._restore(backup)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: fall back to the previous state
                self._restore(backup)
                log.warning(
                    "state %s failed to load (%s: %s); trying the previous one",
                    path,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                continue
            log.info("resumed from %s (step %d)", path, recorded)
            return recorded
        return 0

    def _snapshot(self) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "models": [copy.deepcopy(m.state_dict()) for m in acc._models],
            "optimizers": [copy.deepcopy(o.state_dict()) for o in acc._optimizers],
            "custom": {name: copy.deepcopy(obj.state_dict()) for name, obj in self.custom.items()},
        }

    def _restore(self, backup: dict[str, Any]) -> None:
        acc = self.accelerator
        for m, sd in zip(acc._models, backup["models"]):
            m.load_state_dict(sd)
        for o, sd in zip(acc._optimizers, backup["optimizers"]):
            o.load_state_dict(sd)
        for name, obj in self.custom.items():
            obj.load_state_dict(backup["custom"][name])


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
