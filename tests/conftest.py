"""What more than one test file shares: the repository root, the tiny launcher configs, the corpora and
exports they run on, and a runner for commands as a user types them.

Fixtures are found by pytest; the constants and functions are imported (``from tests.conftest import
ROOT, run_launcher``), as ``tests/data`` does with its own conftest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

import avsr
import vatt
from data.lrs2 import LRS2Config
from data.synth import shapes, speech
from data.synth.mediawriter import write_mp4
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig
from train.export import save_export

ROOT = Path(__file__).resolve().parents[1]

# pretrain.py: vatt_test at a tiny input size, deterministic: no workers, dropout 0 (vatt_test), DropToken on.
PRETRAIN_TINY = [
    "model.name=vatt_test",
    "batch_size=8",
    "data.num_workers=0",
    "data.vocab_size=64",
    "preprocess.num_frames=4",
    "preprocess.fps=2.5",
    "preprocess.image_size=32",
    "preprocess.resize_size=36",
    "preprocess.sample_rate=1600",
    "preprocess.max_text_len=24",
    "preprocess.num_positives=3",
    "optim.lr=1e-3",
    "optim.warmup_steps=2",
    "log_every=1",
    "eval.every=0",
    "eval.clips_per_video=2",
    "eval.batch_size=8",
]

# train_avsr.py: avsr_test on 16x16 mouth crops, two utterances a step, no workers (deterministic on a CPU).
AVSR_TINY = [
    "model.name=avsr_test",
    "data.num_workers=0",
    "data.max_frames=200",
    "preprocess.resize=20",
    "preprocess.crop=16",
    "optim.lr=2e-3",
    "optim.warmup_steps=2",
    "log_every=1",
    "save_every=100",
    "eval.max_utterances=2",
]


# ---------------------------------------------------------------------------------------------------------
# Commands as a user runs them.


def start_python(
    args: list[str], *, env: dict[str, str] | None = None, launcher: list[str] | None = None, cwd: Path = ROOT
) -> subprocess.Popen:
    """``python *args`` (or ``*launcher *args``, e.g. torchrun) started in ``cwd`` in a session of its own,
    output captured as text; :func:`wait_python` collects it."""
    cmd = [*(launcher or [sys.executable]), *args]
    env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_python(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    """The finished command of :func:`start_python`. One still running after ``timeout`` seconds fails the
    test with the Python stacks of every one of its processes, so that a hang shows where it hangs."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = _abort_with_stacks(proc)
        pytest.fail(
            f"{' '.join(map(str, proc.args[:4]))} ... did not end within {timeout:.0f} s; stacks:\n{err[-12000:]}"
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """``python *args`` (or ``*launcher *args``) run to its end (:func:`start_python`, :func:`wait_python`).
    The caller checks the exit status: many tests expect a failure."""
    return wait_python(start_python(args, env=env, launcher=launcher, cwd=cwd), timeout)


def _abort_with_stacks(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGABRT to every process of a hung command, its descendants and whatever else is left in its session
    (``PYTHONFAULTHANDLER`` makes each Python print the stacks of all its threads), then SIGKILL to them;
    returns the command's stdout and its stderr, which ends with a list of the processes that were still
    there (a process left behind by one that exited keeps the output pipes open just as well)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.pid)
        found = {p.pid: p for p in (root, *root.children(recursive=True))}  # torchrun's workers: own sessions
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):  # gone, or not ours to ask about
            if os.getsid(p.pid) == proc.pid:
                found.setdefault(p.pid, p)
    alive = []
    for p in found.values():
        with contextlib.suppress(psutil.Error):
            alive.append(f"  pid {p.pid}: {' '.join(p.cmdline())[:200]}")
    ordered = sorted(found.values(), key=lambda p: p.pid == proc.pid)  # workers before their launcher
    for sig in (signal.SIGABRT, signal.SIGKILL):
        for p in ordered:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        time.sleep(5 if sig == signal.SIGABRT else 0)
    out, err = proc.communicate()
    return out, err + "\nprocesses of the command still running at the time limit:\n" + "\n".join(alive)


def run_launcher(
    script: str,
    args: list[str],
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run a launcher (``pretrain.py``, ``train_avsr.py``, ...) in the repository root; the test fails with
    the end of its stderr unless it exits 0."""
    out = run_python([script, *args], env=env, launcher=launcher, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


# ---------------------------------------------------------------------------------------------------------
# Corpora the launchers train on, written once per session.


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes corpus (data.synth.shapes) at 16 training and 8 validation videos: PRETRAIN_TINY's data."""
    out = tmp_path_factory.mktemp("shapes")
    return shapes.generate(out, num_train=16, num_val=8, seed=0, workers=1, progress=False)


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speech corpus (data.synth.speech) in the LRS2 layout: one training, one validation and one test
    speaker of three utterances each, without the pretrain folder. AVSR_TINY's data."""
    cfg = speech.SpeechCorpusConfig(
        out=str(tmp_path_factory.mktemp("speech")),
        speakers=3,
        utterances=3,
        val_speakers=1,
        test_speakers=1,
        workers=1,
        pretrain=False,
    )
    return speech.generate(cfg, progress=False)


def write_lrs2_clip(root: Path, clip_id: str, frames: int, text: str, rng: np.random.Generator) -> Path:
    """``root/mvlrs_v1/main/<clip_id>.mp4`` and ``.txt`` as LRS2 has them: a face-tracked 160x160 crop at
    25 fps (a mouth-like blob opening and closing over a smooth face), 16 kHz noise-like audio drawn from
    ``rng``, and the transcript. Returns the path without suffix."""
    base = root / "mvlrs_v1" / "main" / clip_id
    base.parent.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:160, 0:160]
    video = np.zeros((frames, 160, 160, 3), np.uint8)
    for t in range(frames):
        r = 10 + 8 * abs(np.sin(t / 3 + len(text)))
        blob = ((x - 80) / 24) ** 2 + ((y - 112) / r) ** 2 < 1
        video[t] = (60 + 0.5 * x + 0.2 * y - 50 * blob)[..., None].astype(np.uint8)
    audio = (0.2 * rng.standard_normal(frames * 640) * np.sin(np.arange(frames * 640) / 300) ** 2).astype(np.float32)
    write_mp4(base.with_suffix(".mp4"), video, 25.0, audio, 16000)
    base.with_suffix(".txt").write_text(f"Text:  {text}\nConf:  5\n")
    return base


# ---------------------------------------------------------------------------------------------------------
# Exports of the test-sized models, random weights.


def tiny_vatt_preprocess() -> PreprocessConfig:
    """The input size of the tiny VATT exports: four 32x32 frames at 5 fps, 8 kHz audio, 8 tokens."""
    return PreprocessConfig(num_frames=4, fps=5.0, image_size=32, resize_size=32, sample_rate=8000, max_text_len=8)


def save_tiny_vatt_export(
    path: Path,
    seed: int,
    *,
    tokenizer: Path | None = None,
    vocab_size: int | None = None,
    preprocess: PreprocessConfig | None = None,
    **extra: object,
) -> Path:
    """A ``vatt_test`` export at the input size of ``preprocess`` (default :func:`tiny_vatt_preprocess`) with
    weights drawn from ``seed``, and ``tokenizer`` in it; the vocabulary is the tokenizer's, or ``vocab_size``
    for an export without one; ``extra`` adds model overrides."""
    pp = preprocess or tiny_vatt_preprocess()
    overrides = {
        "num_frames": pp.num_frames,
        "image_size": pp.image_size,
        "audio_samples": pp.audio_samples,
        "max_text_len": pp.max_text_len,
        "vocab_size": Tokenizer(tokenizer).vocab_size if tokenizer is not None else vocab_size,
        **extra,
    }
    torch.manual_seed(seed)
    model = vatt.create_model("vatt_test", **overrides)
    return save_export(
        path,
        kind="vatt",
        model_name="vatt_test",
        overrides=overrides,
        state_dict=model.state_dict(),
        preprocess=pp.to_dict(),
        tokenizer_file=tokenizer,
    )


def save_tiny_avsr_export(path: Path) -> Path:
    """An audio-visual ``avsr_test`` export over LRS2 characters, for 16x16 crops of a 20x20 resize. Its CTC
    head is confident, so that random weights still emit characters, not only blanks."""
    tokens = avsr.TokenSet.characters()
    overrides = {"vocab_size": tokens.vocab_size, "modalities": "av"}
    torch.manual_seed(0)
    model = avsr.create_model("avsr_test", **overrides)
    with torch.no_grad():
        model.ctc_head.bias[0] -= 3.0
    return save_export(
        path,
        kind="avsr",
        model_name="avsr_test",
        overrides=overrides,
        state_dict=model.state_dict(),
        preprocess=LRS2Config(root="", resize=20, crop=16).preprocess(),
        extra={"tokens": tokens.to_dict()},
    )


# ---------------------------------------------------------------------------------------------------------
# Threads.


@pytest.fixture(scope="session")
def single_threaded_faiss():
    """Tiny indexes gain nothing from threads, and on a shared machine OpenMP barriers between two busy
    threads cost up to 20x (seen: 6 s instead of 0.3 s to train a small IVF-PQ). Used by the eval/ and
    bench/ tests; faiss and torch may share one OpenMP runtime, so torch runs on one thread after it too."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
