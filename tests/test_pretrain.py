"""pretrain.py end to end on a tiny synthetic corpus: resume, processes, paper configs, bad media."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.files import OUTPUT_MARKER
from tests.conftest import PRETRAIN_TINY, ROOT, run_launcher, run_python, start_python, wait_python


def _data_args(corpus: Path) -> list[str]:
    return [f"data.train_manifests=[{corpus / 'train.jsonl'}]", f"data.val_manifest={corpus / 'val.jsonl'}"]


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


@pytest.mark.slow
def test_resume_is_exact(shapes_corpus, tmp_path):
    common = [*PRETRAIN_TINY, *_data_args(shapes_corpus), "max_steps=6", "save_every=3"]
    full = tmp_path / "full"
    run_launcher("pretrain.py", [*common, "keep_states=5", f"output_dir={full}"])
    reference = _losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    assert (full / "metrics_final.json").exists() and (full / "curves.png").exists()

    # A run that stopped after step 3: the same directory holding only what existed at that point.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "states" / "step-00000003", resumed / "states" / "step-00000003")
    for name in ("tokenizer.model", "config.yaml", OUTPUT_MARKER):
        shutil.copy(full / name, resumed / name)
    run_launcher("pretrain.py", [*common, f"output_dir={resumed}"])
    again = _losses(resumed)
    assert sorted(again) == [4, 5, 6]
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


@pytest.mark.slow
def test_sigterm_saves_a_state_and_exits_cleanly(shapes_corpus, tmp_path):
    run = tmp_path / "run"
    proc = start_python(
        ["pretrain.py", *PRETRAIN_TINY, *_data_args(shapes_corpus), "max_steps=100000", f"output_dir={run}"]
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    err = wait_python(proc, timeout=300).stderr
    assert proc.returncode == 0, err[-2000:]
    states = sorted((run / "states").glob("step-*"))
    assert states, "no state saved on SIGTERM"
    assert "state saved" in err


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(shapes_corpus, tmp_path):
    common = [*PRETRAIN_TINY, *_data_args(shapes_corpus), "max_steps=4", "save_every=100"]
    one = tmp_path / "one"
    run_launcher("pretrain.py", [*common, f"output_dir={one}"])
    two = tmp_path / "two"
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2", "--master_port=29531"]
    run_launcher(
        "pretrain.py",
        [*common, f"output_dir={two}", f"data.tokenizer={one / 'tokenizer.model'}"],
        env=env,
        launcher=torchrun,
    )
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # float32 reductions run in another order (gradients averaged over processes), so Adam's updates
    # drift apart at the level of rounding; a different batch split would differ in the first digits.
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vatt_bbs", "vatt_mbs", "vatt_lbs", "vatt_ma_medium"])
def test_paper_configs_run_two_steps_at_reduced_input(name, shapes_corpus, tmp_path):
    run = tmp_path / name
    reduced = [
        "max_steps=2",
        "batch_size=2",
        "data.num_workers=0",
        "data.vocab_size=64",
        "preprocess.num_frames=4",
        "preprocess.image_size=32",
        "preprocess.resize_size=36",
        "preprocess.sample_rate=3200",
        "eval.clips_per_video=1",
        "eval.batch_size=4",
        "log_every=1",
        "save_every=0",  # no multi-GB optimizer states on disk
    ]
    run_launcher(
        "pretrain.py",
        ["--config", f"configs/pretrain/{name}.yaml", *_data_args(shapes_corpus), *reduced, f"output_dir={run}"],
    )
    resolved = (run / "config.yaml").read_text()
    assert f"name: {name}" in resolved and "batch_size: 2" in resolved
    assert sorted(_losses(run)) == [1, 2]


@pytest.mark.slow
def test_corrupt_file_is_skipped_and_counted(shapes_corpus, tmp_path):
    lines = (shapes_corpus / "train.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    entry = json.loads(lines[0])
    entry.update(media=str(bad), id="broken")
    manifest = tmp_path / "train.jsonl"
    rows = [json.loads(x) for x in lines]
    for r in rows:
        r["media"] = str(shapes_corpus / r["media"])
    manifest.write_text("\n".join(json.dumps(r) for r in [entry, *rows]) + "\n")
    run = tmp_path / "run"
    out = run_launcher(
        "pretrain.py",
        [
            *PRETRAIN_TINY,
            f"data.train_manifests=[{manifest}]",
            f"data.val_manifest={shapes_corpus / 'val.jsonl'}",
            "data.max_fail_fraction=0.5",
            "max_steps=3",
            f"output_dir={run}",
        ],
    )
    assert str(bad) in out.stderr
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    counts = [r for r in records if "skipped_clips" in r][-1]
    assert counts["skipped_clips"] >= 1 and counts["attempted_clips"] >= 3 * 8
    assert (run / "metrics_final.json").exists()


def _steps(run: Path) -> list[int]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if "loss" in r]


def _hidden(run: Path) -> list[str]:
    """Temp names left anywhere in a run directory (the marker file excepted)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*") if p.name != OUTPUT_MARKER)


def _logged_steps(run: Path) -> int:
    return len(_steps(run)) if (run / "metrics.jsonl").exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(shapes_corpus, tmp_path):
    """Ten SIGKILLs at random moments (some during a save), a resume after each: the losses of the
    uninterrupted run step for step, every step logged once, no temp folder left.

    A kill lands within one step's time after the first step a process logs (the step time measured on
    the uninterrupted run), so each process advances a step or two whatever the machine's speed, and the
    run cannot finish before the tenth kill."""
    import random
    import statistics

    max_steps = 40
    common = [*PRETRAIN_TINY, *_data_args(shapes_corpus), f"max_steps={max_steps}", "save_every=2", "keep_states=2"]
    full = tmp_path / "full"
    run_launcher("pretrain.py", [*common, f"output_dir={full}"])
    reference = _losses(full)
    records = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    step_seconds = statistics.median(1.0 / r["steps_per_s"] for r in records if "steps_per_s" in r)

    run = tmp_path / "killed"
    rng = random.Random(0)
    cmd = [sys.executable, "pretrain.py", *common, f"output_dir={run}"]
    kills, during_save = 0, 0
    while kills < 10:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if kills % 3 == 2:  # at a save: as soon as a half-written state appears
                deadline = time.time() + 60
                while proc.poll() is None and time.time() < deadline:
                    if (run / "states").is_dir() and any(
                        p.name.startswith(".step-") for p in (run / "states").iterdir()
                    ):
                        during_save += 1
                        break
                    time.sleep(0.002)
            else:  # at a random moment once training runs again
                start = _logged_steps(run)
                deadline = time.time() + 60
                while proc.poll() is None and time.time() < deadline and _logged_steps(run) <= start:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, step_seconds))
        finally:
            proc.kill()
            proc.wait()
        if proc.returncode == 0:
            break  # the run finished before the kill
        kills += 1
    assert kills == 10 and during_save >= 1, (kills, during_save)
    run_launcher("pretrain.py", cmd[2:])
    again = _losses(run)
    assert sorted(again) == sorted(reference) == list(range(1, max_steps + 1))
    for step in reference:
        assert again[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step
    steps = _steps(run)
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert _hidden(run) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(shapes_corpus, tmp_path):
    import psutil

    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node=2"]
    common = [*PRETRAIN_TINY, *_data_args(shapes_corpus), "max_steps=10", "save_every=0"]
    full = tmp_path / "full"
    run_launcher(
        "pretrain.py",
        [*common, f"output_dir={full}"],
        env=env,
        launcher=[*torchrun, f"--master_port={_free_port()}"],
        timeout=300,
    )
    reference = _losses(full)

    run = tmp_path / "run"
    proc = start_python(
        ["pretrain.py", *common, f"output_dir={run}"], env=env, launcher=[*torchrun, f"--master_port={_free_port()}"]
    )
    deadline = time.time() + 300
    while time.time() < deadline and _logged_steps(run) < 2:
        time.sleep(0.1)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "pretrain.py" in " ".join(p.cmdline())]
    rank1 = [p for p in workers if p.environ().get("RANK") == "1"]
    assert len(rank1) == 1, [p.cmdline() for p in workers]
    rank1[0].send_signal(signal.SIGTERM)
    err = wait_python(proc, timeout=300).stderr
    assert proc.returncode == 0, err[-3000:]
    stopped = sorted(
        int(line.rsplit("stopped at step ", 1)[1].split(";")[0])
        for line in err.splitlines()
        if "stopped at step" in line
    )
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    states = sorted(p.name for p in (run / "states").iterdir())
    assert states == [f"step-{stopped[0]:08d}"]
    assert max(_steps(run)) <= stopped[0]

    run_launcher(
        "pretrain.py", [*common, f"output_dir={run}"], env=env, launcher=[*torchrun, f"--master_port={_free_port()}"]
    )
    again = _losses(run)
    assert sorted(again) == sorted(reference)
    for step in reference:
        assert again[step] == pytest.approx(reference[step], rel=1e-6, abs=1e-7), step


def test_a_run_where_every_clip_is_bad_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(
        "".join(json.dumps({"media": str(bad), "id": f"b{i}", "captions": ["x y"]}) + "\n" for i in range(8))
    )
    run = tmp_path / "run"
    args = [*PRETRAIN_TINY, f"data.train_manifests=[{manifest}]", f"data.val_manifest={manifest}"]
    out = run_python(["pretrain.py", *args, "max_steps=2", f"output_dir={run}"], timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and "failed to decode" in out.stderr, out.stderr[-2000:]
    assert not (run / "export").exists() and not (run / "metrics_final.json").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("batch_size=0", "batch_size"),
        ("log_every=0", "log_every"),
        ("grad_accum=0", "grad_accum"),
        ("data.max_fail_fraction=2", "data.max_fail_fraction"),
        ("data.val_manifest=/no/such/val.jsonl", "data.val_manifest"),
    ],
)
def test_bad_config_values_stop_before_any_work(override, named, tmp_path):
    run = tmp_path / "run"
    out = run_python(["pretrain.py", override, f"output_dir={run}"], timeout=120)
    assert out.returncode != 0
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and named in lines[0], out.stderr[-2000:]
    assert not run.exists()


@pytest.mark.slow
def test_save_every_zero_runs_to_the_end_and_tensorboard_gets_the_metrics(shapes_corpus, tmp_path):
    run = tmp_path / "run"
    args = [
        *PRETRAIN_TINY,
        *_data_args(shapes_corpus),
        "max_steps=3",
        "save_every=0",
        "report_to=tensorboard",
        f"output_dir={run}",
    ]
    run_launcher("pretrain.py", args)
    assert (run / "metrics_final.json").exists() and (run / "curves.png").exists()
    assert not (run / "states").exists() or not any((run / "states").iterdir())
    events = list((run / "trackers").rglob("events.out.tfevents*"))
    assert events, sorted(p.name for p in run.rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = {e.step: e.value for e in acc.Scalars("loss")}
    assert logged == pytest.approx(_losses(run), rel=1e-6)
