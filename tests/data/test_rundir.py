import json
import os
import signal

import torch
from accelerate import Accelerator

from data.rundir import MetricsLog, StateManager, StopRequest, atomic_write_json, cpu_threads, plot_curves


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
