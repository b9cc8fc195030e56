"""The query tool: text, example-video and audio queries, contact sheets, and its refusals."""

import shutil

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from eval.embed import embed_manifest, embed_texts
from eval.index import FingerprintMismatchError, RetrievalIndex
from eval.retrieval import evaluate_retrieval
from eval.search import QueryError, main, search
from eval.sheet import contact_sheet
from eval.vatt_export import load_vatt_export
from tests.conftest import run_python


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    exp = load_vatt_export(corpus.export)
    index_dir = tmp_path_factory.mktemp("search") / "index"
    evaluate_retrieval(
        exp.model, exp.preprocess, exp.tokenizer, corpus.manifest, index_dir=index_dir, export_dir=corpus.export
    )
    emb = embed_manifest(exp.model, exp.preprocess, exp.tokenizer, corpus.manifest, progress=False)
    return exp, index_dir, emb


def test_text_query_ranks_like_brute_force(built):
    exp, index_dir, emb = built
    hits = search(index_dir, text="the blue box", k=4, export=exp)
    q = embed_texts(exp.model, exp.tokenizer, ["the blue box"], exp.preprocess.max_text_len, progress=False)
    assert torch.allclose(q[0], emb.text_vt[emb.captions.index("the blue box")], atol=1e-6)
    scores = (q @ emb.video_vt.T)[0].numpy()
    assert [h.row for h in hits] == np.argsort(-scores, kind="stable")[:4].tolist()
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:4], atol=1e-5)
    assert hits[0].media.endswith(f"v{hits[0].row}.mp4")


def test_example_video_finds_itself_and_audio_query_searches_the_audio_space(corpus, built):
    exp, index_dir, emb = built
    hits = search(index_dir, video=corpus.videos[3], k=3)  # export read from the index meta
    assert hits[0].id == "v3" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    hits = search(index_dir, audio=corpus.videos[1], k=6, export=exp)
    from eval.embed import embed_audio_file

    qa = embed_audio_file(exp.model, corpus.videos[1], exp.preprocess)
    # the whole-track decode gives nearly the clips the gallery saw
    assert float(qa[0] @ emb.audio_va[1]) > 0.99
    scores = (qa @ emb.video_va.T)[0].numpy()
    assert [h.row for h in hits] == np.argsort(-scores, kind="stable").tolist()


def test_wrong_model_and_bad_queries_are_refused(corpus, built, tmp_path):
    exp, index_dir, _ = built
    with pytest.raises(FingerprintMismatchError):
        search(index_dir, text="blue", export=corpus.other_export)
    with pytest.raises(QueryError, match="exactly one"):
        search(index_dir, text="blue", video=corpus.videos[0], export=exp)
    with pytest.raises(SystemExit) as err:
        main(["--index", str(index_dir), "--export", str(corpus.other_export), "blue"])
    msg = str(err.value.code)
    assert msg.startswith("eval.search: index was built with model export") and "\n" not in msg
    with pytest.raises(SystemExit) as err:
        main(["--index", str(tmp_path / "missing"), "blue"])
    assert "not found" in str(err.value.code) and "\n" not in str(err.value.code)


def test_cli_prints_hits_and_writes_a_contact_sheet(built, tmp_path, capsys):
    _, index_dir, _ = built
    sheet = tmp_path / "sheet.png"
    main(["--index", str(index_dir), "a red square", "-k", "3", "--sheet", str(sheet), "--frames", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "score", "media"]
    rows = [line.split() for line in out[1:4]]
    assert [r[0] for r in rows] == ["1", "2", "3"] and all(r[2].endswith(".mp4") for r in rows)
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert out[4] == f"contact sheet: {sheet}"
    image = imread(sheet)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert image[..., :3].std() > 0.05  # frames were drawn, not an empty canvas


def test_contact_sheet_marks_unreadable_media(built, tmp_path):
    _, index_dir, _ = built
    index = RetrievalIndex.load(index_dir)
    hits = index.search(np.ones((1, index.indexes["video_vt"].d), np.float32), 2, fingerprint=index.fingerprint)[0]
    hits[1].item["media"] = str(tmp_path / "gone.mp4")
    out = contact_sheet(hits, tmp_path / "s.png", frames_per_hit=2)
    assert imread(out).shape[0] > 100


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["-k", "0"], "-k must be >= 1, got 0"),
        (["-k", "-3"], "-k must be >= 1, got -3"),
        (["--frames", "0"], "--frames must be >= 1, got 0"),
        (["--export", "{nope}"], "--export: export directory '{nope}' not found"),
        (["--video", "{nope}"], "give exactly one query: a text, --video FILE or --audio FILE"),
    ],
)
def test_bad_arguments_fail_with_one_line_before_loading(built, tmp_path, monkeypatch, extra, needle):
    _, index_dir, _ = built
    nope = str(tmp_path / "nope.mp4")

    def boom(*args, **kwargs):
        raise AssertionError("the index was loaded although an argument was invalid")

    monkeypatch.setattr(RetrievalIndex, "load", boom)
    with pytest.raises(SystemExit) as err:
        main(["--index", str(index_dir), "blue", *(a.format(nope=nope) for a in extra)])
    assert str(err.value.code) == f"eval.search: {needle.format(nope=nope)}"


def test_missing_inputs_name_their_flag(built, tmp_path):
    _, index_dir, _ = built
    for args, needle in [
        (["--index", str(tmp_path / "gone"), "blue"], f"--index: index directory '{tmp_path / 'gone'}' not found"),
        (
            ["--index", str(index_dir), "--video", str(tmp_path / "v.mp4")],
            f"--video: file '{tmp_path / 'v.mp4'}' not found",
        ),
        (
            ["--index", str(index_dir), "--audio", str(tmp_path / "a.wav")],
            f"--audio: file '{tmp_path / 'a.wav'}' not found",
        ),
    ]:
        with pytest.raises(SystemExit) as err:
            main(args)
        assert str(err.value.code) == f"eval.search: {needle}"
    with pytest.raises(QueryError, match="k must be >= 1, got 0"):
        search(index_dir, text="blue", k=0)


def test_k_zero_as_a_process_is_one_line(built):
    _, index_dir, _ = built
    proc = run_python(["-m", "eval.search", "--index", str(index_dir), "blue", "-k", "0"], timeout=120)
    assert proc.returncode == 1 and proc.stderr == "eval.search: -k must be >= 1, got 0\n"


def test_malformed_export_is_one_line(corpus, built, tmp_path):
    _, index_dir, _ = built
    broken = tmp_path / "export"
    shutil.copytree(corpus.export, broken)
    (broken / "export.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(SystemExit) as err:
        main(["--index", str(index_dir), "--export", str(broken), "blue"])
    assert str(err.value.code) == f"eval.search: {broken / 'export.json'}: not UTF-8 text (byte 0)"
