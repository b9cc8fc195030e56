"""Training states that resume exactly and never run code from disk."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from data.files import OUTPUT_MARKER, fsync_path, fsync_tree, remove_path


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
                remove_path(old)
                os.replace(final, old)
                os.replace(tmp, final)
                remove_path(old)
            else:
                os.replace(tmp, final)
            fsync_path(self.root)
            for _, stale in self.states()[: -self.keep]:
                shutil.rmtree(stale, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def clean_partials(self) -> None:
        """Remove the hidden half-written states that a kill during a save left behind."""
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith(".step-"):
                    remove_path(p)

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
