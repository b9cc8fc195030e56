"""Every command that writes refuses an existing folder it did not write at an output path, before any
work, with one line naming the flag and the path, and leaves the folder byte-identical; its own earlier
output at the same path is replaced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from data.files import OUTPUT_MARKER, OutputPathError
from eval import curves, lrs2, retrieval, search
from eval.index import RetrievalIndex
from tests.conftest import run_python


def user_folder(path: Path) -> Path:
    """A folder of someone's files: nested, binary and text, one of them named like our outputs."""
    (path / "sub").mkdir(parents=True)
    (path / "holiday.jpg").write_bytes(bytes(range(256)) * 4)
    (path / "sub" / "notes.txt").write_text("do not lose this\n")
    (path / "meta.json").write_text('{"mine": true}\n')
    return path


def digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (folders as "dir")."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def refused(call, folder: Path, flag: str) -> str:
    """Run a CLI ``main`` that must exit with one line naming ``flag`` and ``folder``, leaving it intact."""
    before = digest(folder)
    siblings = sorted(p.name for p in folder.parent.iterdir())
    with pytest.raises(SystemExit) as err:
        call()
    msg = str(err.value.code)
    assert "\n" not in msg and msg.count(str(folder)) == 1 and f"{flag}: " in msg, msg
    assert "did not write" in msg
    assert digest(folder) == before and before  # byte-identical, and there was something to lose
    assert sorted(p.name for p in folder.parent.iterdir()) == siblings  # no temporary left behind
    return msg


def no_work(monkeypatch, module, name: str) -> None:
    """Fail the test if ``module.name`` (the first piece of real work) is called."""

    def boom(*args, **kwargs):
        raise AssertionError(f"{name} ran although an output path was refused")

    monkeypatch.setattr(module, name, boom)


# --- eval.curves --------------------------------------------------------------------------------------


def metrics_run(tmp_path: Path, values: list[float]) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    lines = [json.dumps({"step": 10 * (i + 1), "loss": v}) for i, v in enumerate(values)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_curves_refuses_a_user_folder_and_replaces_its_own_png(tmp_path, monkeypatch, capsys):
    run = metrics_run(tmp_path, [3.0, 2.0, 1.5])
    folder = user_folder(tmp_path / "figures")
    import matplotlib.figure

    no_work(monkeypatch, matplotlib.figure.Figure, "savefig")
    msg = refused(lambda: curves.main([str(run), "--keys", "loss", "--out", str(folder)]), folder, "--out")
    assert msg.startswith("eval.curves: --out: ")
    monkeypatch.undo()
    out = tmp_path / "loss.png"
    curves.main([str(run), "--keys", "loss", "--out", str(out)])
    first = out.read_bytes()
    metrics_run(tmp_path, [3.0, 1.0, 0.5, 0.2])
    curves.main([str(run), "--keys", "loss", "--out", str(out)])  # the same path again: replaced
    assert out.read_bytes() != first and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "loss.png", "run"]
    with pytest.raises(OutputPathError):  # the library function checks too
        curves.plot([str(run)], ["r"], ["loss"], folder)
    assert "wrote" in capsys.readouterr().out


def test_curves_as_a_process_prints_one_line_and_no_traceback(tmp_path):
    run = metrics_run(tmp_path, [1.0])
    folder = user_folder(tmp_path / "figures")
    before = digest(folder)
    proc = run_python(["-m", "eval.curves", str(run), "--keys", "loss", "--out", str(folder)], timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"eval.curves: --out: {folder} ")
    assert digest(folder) == before


# --- eval.retrieval and index directories --------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--index", "--json"])
def test_retrieval_refuses_user_folders_before_loading_the_model(corpus, tmp_path, monkeypatch, flag):
    folder = user_folder(tmp_path / "mine")
    no_work(monkeypatch, retrieval, "load_vatt_export")
    args = ["--export", str(corpus.export), "--manifest", str(corpus.manifest), flag, str(folder)]
    assert refused(lambda: retrieval.main(args), folder, flag).startswith(f"eval.retrieval: {flag}: ")


def test_retrieval_refuses_an_existing_file_as_index_folder(corpus, tmp_path, monkeypatch):
    file = tmp_path / "index"
    file.write_text("a file")
    no_work(monkeypatch, retrieval, "load_vatt_export")
    with pytest.raises(SystemExit) as err:
        retrieval.main(["--export", str(corpus.export), "--manifest", str(corpus.manifest), "--index", str(file)])
    assert (
        str(err.value.code)
        == f"eval.retrieval: --index: {file} is an existing file; refusing to replace it with a folder"
    )
    assert file.read_text() == "a file"


def test_retrieval_rerun_replaces_its_own_index_and_json(corpus, tmp_path):
    index, metrics = tmp_path / "ix", tmp_path / "metrics.json"
    args = ["--export", str(corpus.export), "--manifest", str(corpus.manifest), "--index", str(index)]
    retrieval.main([*args, "--json", str(metrics)])
    assert (index / OUTPUT_MARKER).is_file()
    (index / "leftover.txt").write_text("written into our index folder by hand")
    first = json.loads(metrics.read_text())
    retrieval.main([*args, "--json", str(metrics), "--factory", "HNSW8"])
    assert not (index / "leftover.txt").exists()  # replaced whole, not merged
    assert RetrievalIndex.load(index).meta["factory"] == "HNSW8"
    assert json.loads(metrics.read_text()) == first  # exact metrics do not depend on the index type
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix", "metrics.json"]


def test_index_save_refuses_a_user_folder_or_a_file_before_writing_and_replaces_its_own(tmp_path, monkeypatch):
    x = np.random.default_rng(0).standard_normal((12, 6)).astype(np.float32)
    index = RetrievalIndex.build({"video_vt": x}, [{"id": str(i)} for i in range(12)], fingerprint="f")
    folder = user_folder(tmp_path / "dataset")
    (tmp_path / "notes.txt").write_text("a file of the user")
    before = digest(folder)
    no_work(monkeypatch, faiss, "write_index")
    with pytest.raises(OutputPathError) as err:
        index.save(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)
    assert digest(folder) == before
    with pytest.raises(OutputPathError, match="existing file; refusing to replace it with a folder"):
        index.save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "a file of the user"
    monkeypatch.undo()
    index.save(tmp_path / "ix")
    smaller = RetrievalIndex.build({"video_vt": x[:5]}, [{"id": str(i)} for i in range(5)], fingerprint="g")
    smaller.save(tmp_path / "ix")
    assert len(RetrievalIndex.load(tmp_path / "ix")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "ix", "notes.txt"]


# --- eval.search ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "index"
    retrieval.main(["--export", str(corpus.export), "--manifest", str(corpus.manifest), "--index", str(path)])
    return path


def test_search_refuses_a_user_folder_as_contact_sheet_before_searching(index_dir, tmp_path, monkeypatch):
    folder = user_folder(tmp_path / "album")
    no_work(monkeypatch, search, "search")
    args = ["--index", str(index_dir), "a red square", "--sheet", str(folder)]
    assert refused(lambda: search.main(args), folder, "--sheet").startswith("eval.search: --sheet: ")


def test_search_rerun_replaces_its_own_contact_sheet(index_dir, tmp_path, capsys):
    sheet = tmp_path / "hits.png"
    search.main(["--index", str(index_dir), "a red square", "-k", "2", "--sheet", str(sheet)])
    first = sheet.read_bytes()
    search.main(["--index", str(index_dir), "the blue box", "-k", "3", "--sheet", str(sheet)])
    assert sheet.read_bytes() != first and sheet.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hits.png"]
    assert capsys.readouterr().out.count("contact sheet: ") == 2


# --- eval.lrs2 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--hyps"])
def test_lrs2_refuses_user_folders_before_loading_the_model(tmp_path, monkeypatch, flag):
    root, export = tmp_path / "lrs2", tmp_path / "export"
    root.mkdir()
    export.mkdir()
    folder = user_folder(tmp_path / "results")
    no_work(monkeypatch, lrs2, "load_avsr_export")
    args = ["--root", str(root), "--export", str(export), flag, str(folder)]
    assert refused(lambda: lrs2.main(args), folder, flag).startswith(f"eval.lrs2: {flag}: ")
