"""Run directories: where a run writes, and whether an existing one may be continued or replaced.

A run directory holds the resolved config (``config.yaml``), ``metrics.jsonl``, training states under
``states/``, an export under ``export/``, ``curves.png`` and ``metrics_final.json``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from data.files import is_ours, mark_ours, remove_path
from data.schema import flatten


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
                remove_path(path / name)
        elif resume == "never":
            raise RunDirError(
                f"output_dir {path} already holds a run and resume=never; choose a new output_dir, "
                "or pass overwrite=true to replace that run"
            )
        else:
            import yaml

            try:
                before = flatten(yaml.safe_load(saved.read_text()) or {})
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:
                raise RunDirError(f"{saved} is not a readable config ({type(exc).__name__})") from None
            now = flatten(config)
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
