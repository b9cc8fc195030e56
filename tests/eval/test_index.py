"""FAISS index wrapper: exact search equals brute force, approximate indexes, directory round trip, errors."""

import json

import faiss
import numpy as np
import pytest

from eval.index import (
    FingerprintMismatchError,
    IndexBuildError,
    IndexDirError,
    RetrievalIndex,
    build_faiss_index,
    l2_normalize,
)


def gallery(n=600, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


def brute_force_topk(queries, vectors, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ v.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def make_index(factory="Flat", n=600, **kw):
    x = gallery(n)
    items = [{"id": f"v{i:04d}", "media": f"videos/v{i:04d}.mp4"} for i in range(n)]
    audio = gallery(n, dim=12, seed=1)
    idx = RetrievalIndex.build(
        {"video_vt": x, "video_va": audio},
        items,
        fingerprint="abc123",
        preprocess={"num_frames": 4, "fps": 10.0},
        factory=factory,
        **kw,
    )
    return idx, x, audio


def test_l2_normalize_accepts_torch_and_numpy():
    import torch

    x = gallery(10, 5)
    a = l2_normalize(x)
    b = l2_normalize(torch.from_numpy(x))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a, b)
    assert np.abs(x - a).max() > 0.1  # the input is not modified in place
    with pytest.raises(ValueError, match="N, D"):
        l2_normalize(np.zeros(3))


def test_exact_search_equals_brute_force():
    idx, x, audio = make_index()
    q = gallery(20, seed=5)
    hits = idx.search(q, 10, fingerprint="abc123")
    want_scores, want_rows = brute_force_topk(q, x, 10)
    got_rows = np.array([[h.row for h in row] for row in hits])
    got_scores = np.array([[h.score for h in row] for row in hits])
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    assert [h.rank for h in hits[0]] == list(range(1, 11))
    assert hits[0][0].id == f"v{want_rows[0, 0]:04d}" and hits[0][0].media.endswith(".mp4")
    # the second space is searched with its own vectors
    qa = gallery(3, dim=12, seed=6)
    rows_a = [[h.row for h in r] for r in idx.search(qa, 5, fingerprint="abc123", space="video_va")]
    np.testing.assert_array_equal(rows_a, brute_force_topk(qa, audio, 5)[1])
    # a query for its own gallery item finds it first with score 1
    self_hit = idx.search(x[42:43], 1, fingerprint="abc123")[0][0]
    assert self_hit.row == 42 and self_hit.score == pytest.approx(1.0, abs=1e-5)
    assert len(idx.search(q[:1], 10_000, fingerprint="abc123")[0]) == len(x)


@pytest.mark.parametrize(
    "factory,kw,min_recall",
    [
        ("IVF8,Flat", {"nprobe": 8}, 1.0),  # probing every list is exact
        ("IVF8,Flat", {"nprobe": 2}, 0.2),
        ("HNSW16", {"ef_search": 200}, 0.95),
        ("IVF4,PQ12x4", {"nprobe": 4}, 0.3),
    ],
)
def test_approximate_indexes_and_their_search_parameters(factory, kw, min_recall):
    idx, x, _ = make_index(factory, n=2000, **kw)
    ivf = faiss.downcast_index(idx.indexes["video_vt"])
    if "nprobe" in kw:
        assert ivf.nprobe == kw["nprobe"]
    else:
        assert ivf.hnsw.efSearch == kw["ef_search"]
    q = gallery(50, seed=9)
    got = np.array([[h.row for h in row] for row in idx.search(q, 10, fingerprint="abc123")])
    want = brute_force_topk(q, x, 10)[1]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= min_recall


@pytest.mark.parametrize("factory,kw", [("Flat", {}), ("IVF8,Flat", {"nprobe": 3}), ("HNSW16", {"ef_search": 20})])
def test_save_load_round_trip(tmp_path, factory, kw):
    idx, _, _ = make_index(factory, n=1000, **kw)
    q = gallery(15, seed=3)
    before = idx.search(q, 7, fingerprint="abc123")
    idx.save(tmp_path / "index")
    loaded = RetrievalIndex.load(tmp_path / "index")
    after = loaded.search(q, 7, fingerprint="abc123")
    assert [[(h.row, h.item) for h in r] for r in after] == [[(h.row, h.item) for h in r] for r in before]
    np.testing.assert_allclose([[h.score for h in r] for r in after], [[h.score for h in r] for r in before])
    assert loaded.meta == idx.meta and loaded.items == idx.items and loaded.spaces == ["video_vt", "video_va"]
    assert json.loads((tmp_path / "index" / "meta.json").read_text())["preprocess"] == {"num_frames": 4, "fps": 10.0}
    # saving again over an existing directory replaces it and leaves no temporary siblings
    idx.save(tmp_path / "index")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_wrong_model_is_refused_with_one_line(tmp_path):
    idx, x, _ = make_index()
    with pytest.raises(FingerprintMismatchError) as err:
        idx.search(x[:1], 3, fingerprint="other999")
    msg = str(err.value)
    assert "abc123" in msg and "other999" in msg and "\n" not in msg
    idx.save(tmp_path / "i")
    with pytest.raises(FingerprintMismatchError):
        RetrievalIndex.load(tmp_path / "i").search(x[:1], 3, fingerprint=None)


def test_missing_and_corrupt_directories(tmp_path):
    with pytest.raises(IndexDirError, match="not found") as err:
        RetrievalIndex.load(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    idx, _, _ = make_index(n=50)

    def corrupt(name, how):
        d = tmp_path / name
        idx.save(d)
        how(d)
        with pytest.raises(IndexDirError, match="corrupt") as err:
            RetrievalIndex.load(d)
        assert "\n" not in str(err.value)

    corrupt("trunc", lambda d: (d / "video_vt.faiss").write_bytes((d / "video_vt.faiss").read_bytes()[:100]))
    corrupt("badjson", lambda d: (d / "meta.json").write_text("{not json"))
    corrupt("jsonlist", lambda d: (d / "meta.json").write_text("[1, 2]"))
    corrupt("noitems", lambda d: (d / "items.json").unlink())
    corrupt("fewitems", lambda d: (d / "items.json").write_text(json.dumps([{"id": "x"}])))
    corrupt("nofaiss", lambda d: (d / "video_va.faiss").unlink())


def test_build_errors_are_clear():
    x = gallery(30)
    with pytest.raises(IndexBuildError, match="has 64 lists but the gallery has only 30"):
        build_faiss_index(x, "IVF64,Flat")
    with pytest.raises(IndexBuildError, match="could not parse"):
        build_faiss_index(x, "NotAnIndex")
    with pytest.raises(IndexBuildError, match="train_size 4 is smaller than the 8 lists"):
        build_faiss_index(gallery(100), "IVF8,Flat", train_size=4)
    sampled = build_faiss_index(gallery(500), "IVF8,Flat", train_size=100, nprobe=8)
    assert sampled.ntotal == 500 and sampled.is_trained
    with pytest.raises(ValueError, match="3 vectors for 30 items"):
        RetrievalIndex.build({"v": x[:3]}, [{"id": str(i)} for i in range(30)], fingerprint=None)
