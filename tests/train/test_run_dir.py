import json
import os
import pickle
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from data.files import (
    OUTPUT_MARKER,
    OutputPathError,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_path,
    is_ours,
)
from tests.conftest import run_python
from train.metrics import MetricsLog
from train.plots import plot_curves
from train.run_dir import RunDirError, cpu_threads, open_run_dir
from train.signals import StopRequest
from train.states import StateError, StateManager


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def test_states_rotate_and_a_broken_newest_state_falls_back(tmp_path):
    acc, model, opt = _setup()
    mgr = StateManager(tmp_path, acc, keep=2)
    saved = {}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        mgr.save(step)
        saved[step] = model.weight.detach().clone()
    assert [s for s, _ in mgr.states()] == [2, 3]
    # Truncate the newest state's weights: resume must report it and load step 2.
    newest = mgr.states()[-1][1]
    weights = next(p for p in newest.iterdir() if p.name.startswith("model"))
    weights.write_bytes(weights.read_bytes()[:10])
    with torch.no_grad():
        model.weight.zero_()
    assert mgr.resume() == 2
    assert torch.equal(model.weight.detach(), saved[2])


def test_resume_without_states_starts_at_zero(tmp_path):
    acc, _, _ = _setup()
    assert StateManager(tmp_path, acc).resume() == 0


def test_stop_request_catches_sigterm():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested


def test_metrics_log_and_curves(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1), "lr": 1e-3, "note": "x"})
    assert [r["step"] for r in log.read()] == list(range(5))
    png = plot_curves(log.read(), tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cpu_threads_shares_the_cores_among_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads(3, 1) == 3  # asked for: kept
    assert cpu_threads(0, 1) == 8 and cpu_threads(0, 2) == 4 and cpu_threads(0, 16) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 16 processes over 4 machines: 4 here
    assert cpu_threads(0, 16) == 2


# --- output paths -----------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_path_refuses_a_foreign_folder_and_leaves_it_untouched(tmp_path):
    user = tmp_path / "photos"
    (user / "sub").mkdir(parents=True)
    (user / "a.jpg").write_bytes(b"\xff\xd8 not really")
    (user / "sub" / "b.txt").write_text("keep me")
    before = _snapshot(user)
    with pytest.raises(OutputPathError, match="photos"):
        with atomic_path(user) as tmp:
            tmp.write_text("a png")
    with pytest.raises(OutputPathError):
        check_output_path(user, "dir")
    assert _snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temp left beside it


def test_atomic_path_replaces_its_own_folder_and_a_file(tmp_path):
    out = tmp_path / "export"
    for version in ("one", "two"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text(version)
        assert (out / "weights").read_text() == version and is_ours(out)
    f = tmp_path / "m.json"
    f.write_text("old")
    atomic_write_json(f, {"new": True})
    assert json.loads(f.read_text()) == {"new": True}
    with pytest.raises(OutputPathError, match="existing file"):
        with atomic_path(f) as tmp:
            tmp.mkdir()
    with pytest.raises(OutputPathError, match="output folder"):  # a file never replaces a folder, ours or not
        atomic_write_text(out, "a png by a slip of the path")
    assert (out / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "m.json"]


def test_temps_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    dead = run_python(["-c", "import os; print(os.getpid())"])
    pid = int(dead.stdout)
    stale = [tmp_path / f".out.json.tmp-{pid}-x1", tmp_path / f".out.json.old-{pid}-2"]
    for p in stale:
        p.mkdir()
        (p / "junk").write_text("half")
    alive = tmp_path / f".out.json.tmp-{os.getppid()}-x2"  # a write still in progress elsewhere
    alive.mkdir()
    other = tmp_path / ".user-hidden-folder"
    other.mkdir()
    atomic_write_json(tmp_path / "out.json", [1])
    assert not any(p.exists() for p in stale)
    assert alive.exists() and other.exists()


# --- run directories --------------------------------------------------------------------------------


def test_run_dir_refuses_foreign_folders_other_configs_and_resume_never(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a run directory"):
        open_run_dir(str(user), {"a": 1})
    assert _snapshot(user) == {"notes.txt": b"mine"}

    run = open_run_dir(str(tmp_path / "run"), {"lr": 1.0, "data": {"x": 1}})
    (run / "config.yaml").write_text(yaml.safe_dump({"lr": 1.0, "data": {"x": 1}, "log_every": 5}))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "my-notes.md").write_text("the user's own file")
    # Same config, other logging cadence: the run continues.
    assert open_run_dir(str(run), {"lr": 1.0, "data": {"x": 1}, "log_every": 1}) == run
    with pytest.raises(RunDirError, match=r"another config \(data.x: 1 -> 2\)"):
        open_run_dir(str(run), {"lr": 1.0, "data": {"x": 2}, "log_every": 5})
    with pytest.raises(RunDirError, match="resume=never"):
        open_run_dir(str(run), {"lr": 1.0, "data": {"x": 1}}, resume="never")
    open_run_dir(str(run), {"lr": 2.0}, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [OUTPUT_MARKER, "my-notes.md"]


# --- states -----------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs ``touch`` on a file: what a crafted state would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.target)],))


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])


def test_a_state_with_a_pickle_payload_is_refused_and_the_payload_does_not_run(tmp_path):
    acc, model, _ = _setup()
    mgr = StateManager(tmp_path, acc, custom={"counter": _Counter()})
    path = mgr.save(1)
    marker = tmp_path / "payload-ran"
    # An extra pickle (what Accelerate's register_for_checkpointing would load with weights_only=False).
    with open(path / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(_Evil(marker), f)
    with pytest.raises(StateError, match="unexpected file"):
        mgr.resume()
    (path / "custom_checkpoint_0.pkl").unlink()
    # The payload under a name the state may hold.
    torch.save({"x": _Evil(marker)}, path / "random_states_0.pkl")
    with pytest.raises(StateError, match="more than tensors"):
        mgr.resume()
    assert not marker.exists()


def test_a_state_failing_part_way_rolls_back_and_falls_back(tmp_path):
    acc, model, opt = _setup()
    counter = _Counter()
    mgr = StateManager(tmp_path, acc, keep=3, custom={"counter": counter})
    for step in (1, 2):
        with torch.no_grad():
            model.weight.add_(1.0)
        counter.n = step
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        mgr.save(step)
    # The newest state's weights load, then its optimizer fails: its weights must not stay in the model.
    (mgr.states()[-1][1] / "optimizer.bin").write_bytes(b"torn")
    with torch.no_grad():
        model.weight.fill_(7.0)
    saved_1 = load_file(mgr.states()[0][1] / "model.safetensors")
    assert mgr.resume() == 1
    assert torch.equal(model.weight.detach(), saved_1["weight"]) and counter.n == 1
    # Nothing loads: the model is as it was before the attempts.
    (mgr.states()[0][1] / "optimizer.bin").write_bytes(b"torn")
    with torch.no_grad():
        model.weight.fill_(7.0)
    counter.n = 42
    assert mgr.resume() == 0
    assert torch.all(model.weight == 7.0) and counter.n == 42


def test_rotation_keeps_the_newest_written_states(tmp_path):
    acc, _, _ = _setup()
    mgr = StateManager(tmp_path, acc, keep=2)
    for step in (10, 20, 30):  # an earlier run that got further
        mgr.save(step)
    for step in (5, 6, 7):  # this run, resumed from nothing
        mgr.save(step)
    assert [s for s, _ in mgr.states()] == [6, 7]
    assert mgr.resume() == 7
    assert not [p for p in (tmp_path / "states").iterdir() if p.name.startswith(".")]


def test_metrics_log_skips_a_torn_line_and_rewinds(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.write({"step": step, "loss": float(step)})
    with open(log.path, "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-line
    assert [r["step"] for r in log.read()] == [1, 2, 3, 4, 5]
    log.rewind(3)
    log.write({"step": 4, "loss": 4.5})
    assert [(r["step"], r["loss"]) for r in log.read()] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.5)]
