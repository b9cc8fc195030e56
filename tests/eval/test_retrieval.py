"""Embedding and evaluation end to end with the real ``vatt_test`` model on tiny mp4 files."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.collate import DataFailureError
from data.manifest import ManifestDataset, read_manifest
from data.media import MediaReader
from eval import retrieval
from eval.embed import embed_manifest, embed_videos, load_audio
from eval.index import RetrievalIndex
from eval.retrieval import evaluate_retrieval, main
from eval.vatt_export import export_fingerprint, load_vatt_export
from train.export import ExportError


def brute_force_ranks(scores: np.ndarray, q_lab: np.ndarray, g_lab: np.ndarray) -> np.ndarray:
    """Sort each row by score with wrong items first among equals; 1-based position of the first correct item."""
    out = []
    for row, lab in zip(scores, q_lab):
        correct = g_lab == lab
        order = np.lexsort((correct, -row))
        out.append(int(np.flatnonzero(correct[order])[0]) + 1)
    return np.array(out)


def summary(ranks: np.ndarray) -> dict:
    return {
        "R@1": 100 * np.mean(ranks <= 1),
        "R@5": 100 * np.mean(ranks <= 5),
        "R@10": 100 * np.mean(ranks <= 10),
        "MedR": float(np.median(ranks)),
        "MnR": float(np.mean(ranks)),
        "num_queries": len(ranks),
    }


@pytest.fixture(scope="module")
def exp(corpus):
    return load_vatt_export(corpus.export)


def test_video_embedding_is_the_normalised_mean_of_its_clips(corpus, exp):
    entries = read_manifest(corpus.manifest)
    got = embed_videos(exp.model, entries, exp.preprocess, clips_per_video=4, batch_size=3, progress=False)
    # reference: every clip alone through the same dataset, averaged in float64
    ds = ManifestDataset(entries, exp.preprocess, train=False, clips_per_video=4)
    with torch.no_grad():
        for v in (0, 4, 5):  # 4 has no audio
            clips = [ds[v * 4 + c] for c in range(4)]
            assert [c["clip_index"] for c in clips] == [0, 1, 2, 3]
            video = torch.stack([c["video"] for c in clips])
            emb = exp.model.encode_video(video)["video_vt"].double().mean(0)
            torch.testing.assert_close(got.video_vt[v].double(), F.normalize(emb, dim=0), atol=1e-5, rtol=0)
            if clips[0]["audio_mask"]:
                a = exp.model.encode_audio(torch.stack([c["audio"] for c in clips]))["audio_va"].double().mean(0)
                torch.testing.assert_close(got.audio_va[v].double(), F.normalize(a, dim=0), atol=1e-5, rtol=0)
    assert got.has_audio.tolist() == [True, True, True, True, False, True]
    assert torch.all(got.audio_va[4] == 0)
    # the clips really differ (the four windows are not one clip repeated)
    assert not torch.equal(ds[0]["video"], ds[3]["video"])


def test_evaluate_retrieval_equals_brute_force(corpus, exp, tmp_path):
    exp.model.train()
    results = evaluate_retrieval(
        exp.model,
        exp.preprocess.to_dict(),
        exp.tokenizer,
        corpus.manifest,
        batch_size=5,
        index_dir=tmp_path / "index",
        export_dir=corpus.export,
        progress=False,
    )
    assert exp.model.training  # the mode it came in with
    exp.model.eval()
    emb = embed_manifest(exp.model, exp.preprocess, exp.tokenizer, corpus.manifest, progress=False)
    t = emb.text_vt.double().numpy()
    v = emb.video_vt.double().numpy()
    cap = emb.caption_video.numpy()
    assert emb.captions[0] == emb.captions[-1] == "a red square" and np.array_equal(t[0], t[-1])
    assert len(cap) == 8 and sorted(set(cap)) == [0, 1, 3, 4, 5]
    # float32 scores, as the evaluator computes them, so exact ties stay ties
    s32 = (emb.text_vt @ emb.video_vt.T).numpy()
    want = {
        "t2v": summary(brute_force_ranks(s32, cap, np.arange(6))),
        "v2t": summary(brute_force_ranks(s32.T[[0, 1, 3, 4, 5]], np.array([0, 1, 3, 4, 5]), cap)),
    }
    with_audio = np.array([0, 1, 2, 3, 5])
    va, aa = emb.video_va.numpy()[with_audio], emb.audio_va.numpy()[with_audio]
    want["v2a"] = summary(brute_force_ranks(va @ aa.T, np.arange(5), np.arange(5)))
    want["a2v"] = summary(brute_force_ranks(aa @ va.T, np.arange(5), np.arange(5)))

    def pairwise(x: np.ndarray) -> float:  # the mean cosine over ordered pairs i != j, by loops
        x = x.astype(np.float64)
        cos = [x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for i in range(len(x)) for j in range(len(x))]
        return float(np.mean([c for k, c in enumerate(cos) if k // len(x) != k % len(x)]))

    spaces = {"video_va": emb.video_va.numpy(), "video_vt": v, "audio_va": aa, "text_vt": t}
    want["cosine"] = {k: pairwise(x) for k, x in spaces.items()}
    assert set(results) == set(want)
    for task in want:
        for key, value in want[task].items():
            assert results[task][key] == pytest.approx(value), (task, key)
    assert np.allclose(t @ v.T, s32, atol=1e-6)

    index = RetrievalIndex.load(tmp_path / "index")
    assert index.fingerprint == export_fingerprint(corpus.export) == exp.fingerprint
    assert [it["id"] for it in index.items] == [f"v{i}" for i in range(6)]
    assert [it["media"] for it in index.items] == [str(p) for p in corpus.videos]
    assert index.meta["export"] == str(corpus.export.resolve()) and index.meta["preprocess"]["sample_rate"] == 8000
    assert index.meta["extra"]["metrics"]["t2v"]["R@1"] == results["t2v"]["R@1"]
    hits = index.search(emb.text_vt[:2], 6, fingerprint=exp.fingerprint)
    for q, row in enumerate(hits):
        assert [h.row for h in row] == np.argsort(-(t[q] @ v.T), kind="stable").tolist()


def test_bad_media_is_skipped_with_its_captions_or_stops_the_eval(corpus, exp, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"")
    lines = corpus.manifest.read_text().replace('"videos/', f'"{corpus.root}/videos/').splitlines()
    lines.append(f'{{"media": "{tmp_path / "broken.mp4"}", "id": "broken", "captions": ["a red square"]}}')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFailureError, match="broken.mp4"):
        evaluate_retrieval(exp.model, exp.preprocess, exp.tokenizer, bad, progress=False)
    results = evaluate_retrieval(exp.model, exp.preprocess, exp.tokenizer, bad, max_fail_fraction=0.5, progress=False)
    good = evaluate_retrieval(exp.model, exp.preprocess, exp.tokenizer, corpus.manifest, progress=False)
    assert results == good


def test_index_needs_a_fingerprint(corpus, exp, tmp_path):
    with pytest.raises(ValueError, match="export_dir or fingerprint"):
        evaluate_retrieval(exp.model, exp.preprocess, exp.tokenizer, corpus.manifest, index_dir=tmp_path / "i")


def test_load_audio_matches_the_clip_reader(corpus):
    wave = load_audio(corpus.videos[1], 8000)
    assert abs(wave.shape[0] - 12800) < 2048  # 1.6 s, give or take codec padding
    with MediaReader(corpus.videos[1]) as reader:
        clip = reader.read_audio(0.4, 3200, 8000)
    np.testing.assert_allclose(wave[3200:6400].numpy(), clip.numpy(), atol=1e-4)
    at_16k = load_audio(corpus.videos[1], 16000)
    assert abs(at_16k.shape[0] - 2 * wave.shape[0]) <= 2


def test_cli_prints_the_table_and_writes_the_index(corpus, tmp_path, capsys):
    main(["--export", str(corpus.export), "--manifest", str(corpus.manifest), "--index", str(tmp_path / "ix")])
    out = capsys.readouterr().out
    for word in ("t2v", "v2t", "v2a", "a2v", "R@1", "MedR", "MnR"):
        assert word in out
    assert (tmp_path / "ix" / "meta.json").is_file()
    with pytest.raises(SystemExit) as err:
        main(["--export", str(tmp_path / "nope"), "--manifest", str(corpus.manifest)])
    assert "not found" in str(err.value.code) and "\n" not in str(err.value.code)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--clips-per-video", "0"], "--clips-per-video must be >= 1, got 0"),
        (["--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
        (["--nprobe", "0"], "--nprobe must be >= 1, got 0"),
        (["--ef-search", "0"], "--ef-search must be >= 1, got 0"),
        (["--ef-search", "100000000"], "--ef-search must be <= 65536, got 100000000"),
        (["--max-fail-fraction", "1.5"], "--max-fail-fraction must be in [0, 1], got 1.5"),
        (["--max-fail-fraction", "nan"], "--max-fail-fraction must be in [0, 1], got nan"),
    ],
)
def test_bad_numbers_fail_with_one_line_before_loading(corpus, monkeypatch, extra, needle):
    def boom(*args, **kwargs):
        raise AssertionError("the export was loaded although an argument was invalid")

    monkeypatch.setattr(retrieval, "load_vatt_export", boom)
    with pytest.raises(SystemExit) as err:
        main(["--export", str(corpus.export), "--manifest", str(corpus.manifest), *extra])
    assert str(err.value.code) == f"eval.retrieval: {needle}"


def test_missing_inputs_and_malformed_exports_are_one_line(corpus, tmp_path):
    cases = [
        (
            ["--export", str(tmp_path / "nope"), "--manifest", str(corpus.manifest)],
            f"--export: export directory '{tmp_path / 'nope'}' not found",
        ),
        (
            ["--export", str(corpus.export), "--manifest", str(tmp_path / "m.jsonl")],
            f"--manifest: manifest file '{tmp_path / 'm.jsonl'}' not found",
        ),
    ]
    broken = tmp_path / "export"
    shutil.copytree(corpus.export, broken)
    (broken / "export.json").write_text(json.dumps({"kind": "vatt", "model": {"name": "vatt_test"}}))
    cases.append(
        (
            ["--export", str(broken), "--manifest", str(corpus.manifest)],
            f"{broken / 'export.json'}: missing key 'model.overrides'",
        )
    )
    for args, needle in cases:
        with pytest.raises(SystemExit) as err:
            main(args)
        assert str(err.value.code) == f"eval.retrieval: {needle}"
    with pytest.raises(ExportError, match="export.json: missing key 'model.overrides'"):
        export_fingerprint(broken)
