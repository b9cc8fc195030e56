"""README.md's Python blocks run as written, in order, in one namespace, against tiny exports, an index
and media in a folder that holds the paths the README names (``runs/demo/export``, ``clip.mp4``, ...),
with Accelerate blocked; its model tables match the registries; and ``eval.api`` gives what the
command-line tools give."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import avsr
import vatt
from data.lrs2 import LRS2Dataset, collate_lrs2
from data.synth.mediawriter import write_mp4
from data.tokenizer import train_tokenizer
from eval import api
from eval import lrs2 as lrs2_eval
from eval.embed import embed_texts
from eval.index import FingerprintMismatchError
from eval.retrieval import evaluate_retrieval
from eval.search import search
from eval.vatt_export import load_vatt_export
from tests.conftest import ROOT, run_python, save_tiny_avsr_export, save_tiny_vatt_export, write_lrs2_clip

README = ROOT / "README.md"

# The LRS2 clip the README transcribes, and a second one of the same split.
CLIP = "5535415699068794046/00001"
CLIPS = {CLIP: (30, "WE'LL SEE"), "5535415699068794046/00002": (22, "NOT MUCH")}

# Run every block in one namespace; a block's code is compiled as README.md at its own line numbers, so a
# traceback points into the README.
RUNNER = """
import json, sys
sys.modules["accelerate"] = None  # eval.api and the model libraries must not need Accelerate
namespace = {"__name__": "__main__"}
for line, code in json.load(open(sys.argv[1])):
    print(f"--- README.md:{line}", flush=True)
    exec(compile("\\n" * (line - 1) + code, sys.argv[2], "exec"), namespace)
"""


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first code line, code)`` of every fenced block opened with ```python."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, i = i + 1, i + 1
            while i < len(lines) and lines[i].strip() != "```":
                i += 1
            if i == len(lines):
                raise AssertionError(f"README.md:{start}: ```python block is never closed")
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def run_blocks(blocks: list[tuple[int, str]], cwd: Path, name: str = "README.md") -> subprocess.CompletedProcess:
    spec = cwd / "readme_blocks.json"
    spec.write_text(json.dumps(blocks))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return run_python(["-c", RUNNER, str(spec), name], env=env, cwd=cwd, timeout=600)


# ---------------------------------------------------------------------------------------------------------
# Fixtures: the files the README's paths name, made cheaply (random weights, a few tiny media files).


def _wav(path: Path, wave_: np.ndarray, sample_rate: int) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes((np.clip(wave_, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _shapes(root: Path) -> Path:
    """Four 1.6 s videos of coloured squares with tones, and a manifest with captions."""
    caps = [["a large red circle moving left"], ["a small blue square"], ["a green thing"], ["a yellow disc"]]
    colours = [(220, 30, 30), (30, 60, 230), (30, 200, 40), (240, 220, 20)]
    (root / "videos").mkdir()
    lines = []
    for i, (rgb, cap) in enumerate(zip(colours, caps)):
        frames = np.zeros((16, 32, 32, 3), np.uint8)
        frames[:] = (np.array(rgb) * 0.3).astype(np.uint8)
        for t in range(16):
            frames[t, 10:20, 2 + t : 12 + t] = rgb
        s = np.arange(16 * 800) / 8000
        audio = (0.4 * np.sin(2 * np.pi * (300 + 200 * i) * s)).astype(np.float32)
        write_mp4(root / "videos" / f"v{i}.mp4", frames, 10.0, audio, 8000)
        lines.append(json.dumps({"media": f"videos/v{i}.mp4", "id": f"v{i}", "captions": cap}))
    (root / "val.jsonl").write_text("\n".join(lines) + "\n")
    return root / "val.jsonl"


def _lrs2(root: Path) -> Path:
    """An LRS2 test split of face-tracked 160x160 clips at 25 fps with 16 kHz audio, and landmark files."""
    rng = np.random.default_rng(0)
    for clip_id, (frames, text) in CLIPS.items():
        write_lrs2_clip(root, clip_id, frames, text, rng)
        marks = root / "landmarks" / f"{clip_id}.npy"  # 68 iBUG points, the mouth drifting right
        marks.parent.mkdir(parents=True, exist_ok=True)
        points = np.zeros((frames, 68, 2))
        points[:, :, 0] = 70 + np.arange(frames)[:, None]
        points[:, :, 1] = 110
        np.save(marks, points)
    for split in ("pretrain", "train", "val"):
        (root / f"{split}.txt").write_text("")
    (root / "test.txt").write_text("".join(f"{clip_id} NF\n" for clip_id in CLIPS))
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every path the README's Python blocks name."""
    ws = tmp_path_factory.mktemp("readme")
    manifest = _shapes(ws)
    tok = train_tokenizer(
        [c for line in manifest.read_text().splitlines() for c in json.loads(line)["captions"]], 40, ws / "tok.model"
    )
    export = save_tiny_vatt_export(ws / "runs" / "demo" / "export", seed=0, tokenizer=tok)
    exp = load_vatt_export(export)
    evaluate_retrieval(
        exp.model,
        exp.preprocess,
        exp.tokenizer,
        manifest,
        index_dir=ws / "runs" / "demo" / "index",
        export_dir=export,
        progress=False,
    )
    shutil.copy(ws / "videos" / "v0.mp4", ws / "clip.mp4")
    s = np.arange(8000 * 2) / 8000
    _wav(ws / "sound.wav", 0.3 * np.sin(2 * np.pi * 300 * s), 8000)
    _lrs2(ws / "lrs2")
    save_tiny_avsr_export(ws / "runs" / "avsr" / "export")
    return ws


# ---------------------------------------------------------------------------------------------------------
# The README's blocks.


def test_readme_python_blocks_run_in_order(workspace):
    blocks = python_blocks(README.read_text())
    text = "".join(code for _, code in blocks)
    # The blocks users copy first must be among those run (a renamed fence would skip them silently).
    for call in ("load_vatt(", "load_index(", "load_avsr(", ".transcribe(", "create_model("):
        assert call in text, f"no ```python block of README.md calls {call}"
    out = run_blocks(blocks, workspace)
    assert out.returncode == 0, f"a README.md block failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    assert out.stdout.count("--- README.md:") == len(blocks)
    assert "expected a directory with export.json" in out.stdout  # the error block printed its one line


def test_a_failing_block_fails_the_run(tmp_path):
    """The harness itself: a block that raises (or a name an earlier block did not define) is a failure
    pointing at its README line."""
    out = run_blocks([(3, "x = 1\n"), (10, "\n\nprint(x + undefined_name)\n")], tmp_path)
    assert out.returncode != 0 and 'README.md", line 12' in out.stderr and "undefined_name" in out.stderr
    blocks = python_blocks("text\n```python\nimport os\n```\n\n```bash\nls\n```\n```python\nprint(1)\n```\n")
    assert blocks == [(3, "import os\n"), (10, "print(1)\n")]


def _table(text: str, header: str) -> dict[str, str]:
    """``{name: parameters}`` of the README table whose header row starts with ``| header |``."""
    rows, inside = {}, False
    for line in text.splitlines():
        if line.startswith(f"| {header} |"):
            inside = True
        elif inside and not line.startswith("|"):
            break
        elif inside and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[-1]
    return rows


@pytest.mark.parametrize("lib, header", [(vatt, "VATT model"), (avsr, "AVSR model")])
def test_model_tables_match_the_registries(lib, header):
    rows = _table(README.read_text(), header)
    assert sorted(rows) == lib.list_models()
    for name, params in rows.items():
        with torch.device("meta"):  # shapes only: the large models cost no memory
            model = lib.create_model(name)
        count = sum(p.numel() for p in model.parameters())
        assert params == f"{count / 1e6:.1f}M", name


def test_readme_names_modules_and_files_that_exist():
    text = README.read_text()
    ours = {"vatt", "avsr", "data", "train", "eval", "pretrain", "train_avsr"}
    for module in re.findall(r"python -m ([\w.]+)", text):
        if module.split(".")[0] not in ours:  # pip
            continue
        path = ROOT / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module
    for config in re.findall(r"configs/[\w/]+\.yaml", text):
        assert (ROOT / config).is_file(), config
    for link, anchor in re.findall(r"\]\(([^)#]*)#?([^)]*)\)", text):
        target = ROOT / link if link else README
        assert target.exists(), link
        if anchor:  # GitHub's heading anchors
            headings = re.findall(r"^#+ (.+)$", target.read_text(), flags=re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"{link}#{anchor}"


# ---------------------------------------------------------------------------------------------------------
# eval.api gives what the tools give.


def test_vatt_and_index_agree_with_the_tools(workspace):
    export, index_dir = workspace / "runs" / "demo" / "export", workspace / "runs" / "demo" / "index"
    model = api.load_vatt(export)
    exp = load_vatt_export(export)
    texts = ["a small blue square", "a green thing", "a small blue square"]
    expected = embed_texts(exp.model, exp.tokenizer, texts, exp.preprocess.max_text_len, progress=False)
    assert torch.equal(model.embed_texts(texts), expected)
    assert torch.allclose(model.embed_texts("a green thing"), expected[1:2], atol=1e-6)  # a batch of one
    # A video of the gallery finds itself first, with the cosine of unit vectors.
    index = api.load_index(index_dir)
    hits = index.search_video(workspace / "videos" / "v2.mp4", k=2)
    assert hits[0].id == "v2" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    video = model.embed_video([workspace / "videos" / "v2.mp4", workspace / "videos" / "v3.mp4"])
    assert video.shape[0] == 2 and torch.allclose(video.norm(dim=1), torch.ones(2), atol=1e-5)
    for text in ("a yellow disc", "blue"):
        got = index.search_text(text, k=3)
        ref = search(index_dir, text=text, k=3, export=exp)
        assert [(h.id, h.score) for h in got] == [(h.id, h.score) for h in ref]
        q = model.embed_texts([text])
        assert got[0].score == pytest.approx(float((q @ model.embed_video(got[0].media).T)[0, 0]), abs=1e-4)
    got = index.search_audio(workspace / "videos" / "v1.mp4", k=4)
    ref = search(index_dir, audio=workspace / "videos" / "v1.mp4", k=4, export=exp)
    assert [h.id for h in got] == [h.id for h in ref]
    # An export with other weights is refused, before any query.
    other = save_tiny_vatt_export(workspace / "other_export", seed=1, tokenizer=workspace / "tok.model")
    with pytest.raises(FingerprintMismatchError):
        api.load_index(index_dir, vatt=other)


@pytest.mark.parametrize(
    "modality, decode, landmarks",
    [
        ("av", api.DecodeConfig(), False),
        ("v", api.DecodeConfig(method="greedy"), False),
        ("a", api.DecodeConfig(beam_size=3, ctc_weight=0.3), False),
        ("v", api.DecodeConfig(method="greedy"), True),
    ],
)
def test_transcribe_one_file_equals_eval_lrs2_on_its_split(workspace, modality, decode, landmarks):
    """A file read alone gives the hypothesis eval.lrs2 gives for it as an utterance of its split."""
    root, export = workspace / "lrs2", workspace / "runs" / "avsr" / "export"
    asr = api.load_avsr(export)
    model, tokens, exp = lrs2_eval.load_avsr_export(export)
    marks = str(root / "landmarks") if landmarks else None
    _, records = lrs2_eval.evaluate(
        model, tokens, exp.preprocess, root, "test", modality, decode, landmarks_dir=marks, progress=False
    )
    for record in records:
        file = root / "mvlrs_v1" / "main" / f"{record['id']}.mp4"
        npy = root / "landmarks" / f"{record['id']}.npy" if landmarks else None
        assert asr.transcribe(file, modality=modality, decode=decode, landmarks=npy) == record["hyp"]
    assert any(r["hyp"] for r in records)  # the comparison is between actual strings
    # The same tensors as the split's reader, not only the same words.
    cfg = lrs2_eval.lrs2_config(root, exp.preprocess, landmarks_dir=marks)
    whole = collate_lrs2([LRS2Dataset(cfg, "test", train=False)[0]])
    one = collate_lrs2(
        [
            api._OneUtterance(
                asr.preprocess,
                root / "mvlrs_v1" / "main" / f"{CLIP}.mp4",
                "av",
                root / "landmarks" / f"{CLIP}.npy" if landmarks else None,
            )[0]
        ]
    )
    for key in ("video", "audio", "video_lengths", "audio_lengths"):
        assert torch.equal(whole[key], one[key]), key


def test_api_errors_are_one_line(workspace):
    cases = [
        (api.ExportError, lambda: api.load_vatt(workspace / "nowhere")),
        (api.ExportError, lambda: api.load_avsr(workspace / "runs" / "demo" / "export")),  # a VATT export
        (api.IndexDirError, lambda: api.load_index(workspace / "nowhere")),
        (api.MediaError, lambda: api.load_vatt(workspace / "runs" / "demo" / "export").embed_video("none.mp4")),
        (api.MediaError, lambda: api.load_vatt(workspace / "runs" / "demo" / "export").embed_audio("none.wav")),
        (api.MediaError, lambda: api.load_avsr(workspace / "runs" / "avsr" / "export").transcribe("none.mp4")),
        (
            api.MediaError,
            lambda: api.load_avsr(workspace / "runs" / "avsr" / "export").transcribe(workspace / "val.jsonl"),
        ),
        (
            api.QueryError,
            lambda: api.load_avsr(workspace / "runs" / "avsr" / "export").transcribe(
                workspace / "clip.mp4", modality="x"
            ),
        ),
        (
            api.QueryError,
            lambda: api.load_vatt(workspace / "runs" / "demo" / "export").embed_video(
                workspace / "clip.mp4", space="text"
            ),
        ),
    ]
    for error, call in cases:
        with pytest.raises(error) as info:
            call()
        assert "\n" not in str(info.value).strip() and str(info.value), str(info.value)
