"""FAISS index wrapper: exact search equals brute force, approximate indexes, directory round trip, errors."""

import json
import struct
import tracemalloc
from unittest.mock import ANY

import faiss
import numpy as np
import pytest

from eval import index as eval_index
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


# --- FAISS files and meta.json are checked before FAISS reads anything ------------------------------

FLAT_HEADER = struct.Struct("<4siqqq?i")  # fourcc, d, ntotal, two unused int64, is_trained, metric


def refuse_read_index(monkeypatch):
    """Make any call of faiss.read_index fail the test: the check must refuse the file before it."""

    def boom(*args, **kwargs):
        raise AssertionError("faiss.read_index was called on a file the check should have refused")

    monkeypatch.setattr(faiss, "read_index", boom)


def load_error(path) -> str:
    with pytest.raises(IndexDirError) as err:
        RetrievalIndex.load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_crafted_faiss_file_is_refused_before_faiss_allocates(tmp_path, monkeypatch):
    idx, _, _ = make_index(n=20)
    idx.save(tmp_path / "i")
    # 109 bytes whose header claims 2^27 vectors of dimension 8: faiss would allocate 4 GiB for them
    crafted = FLAT_HEADER.pack(b"IxFI", 8, 1 << 27, 1 << 20, 1 << 20, True, 0)
    crafted += struct.pack("<Q", (1 << 27) * 8) + bytes(109 - len(crafted) - 8)
    assert len(crafted) == 109
    (tmp_path / "i" / "video_vt.faiss").write_bytes(crafted)
    refuse_read_index(monkeypatch)
    tracemalloc.start()
    msg = load_error(tmp_path / "i")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "video_vt.faiss" in msg and "declares 1073741824 items" in msg
    assert peak < 10_000_000  # nothing sized by the header was allocated
    # an unknown index type is refused by its four-character code, before FAISS sees it
    (tmp_path / "i" / "video_vt.faiss").write_bytes(b"IxZZ" + crafted[4:])
    assert "unsupported FAISS index type 'IxZZ'" in load_error(tmp_path / "i")


def test_hnsw_search_breadth_from_the_file_is_bounded(tmp_path, monkeypatch):
    """Sizes can all be right and one field still ask for gigabytes: efSearch sizes HNSW's search heaps."""
    idx, _, _ = make_index("HNSW8", n=30)
    idx.save(tmp_path / "i")
    file = tmp_path / "i" / "video_vt.faiss"
    data = bytearray(file.read_bytes())
    hnsw = faiss.downcast_index(faiss.read_index(str(file))).hnsw
    # efConstruction and efSearch are adjacent int32s right after entry_point and max_level
    pattern = struct.pack("<iiii", hnsw.entry_point, hnsw.max_level, hnsw.efConstruction, hnsw.efSearch)
    at = bytes(data).index(pattern)
    data[at + 12 : at + 16] = struct.pack("<i", 2**31 - 1)
    file.write_bytes(bytes(data))
    refuse_read_index(monkeypatch)
    assert "efSearch 2147483647" in load_error(tmp_path / "i")


SUPPORTED_FACTORIES = [
    "Flat",
    "IVF4,Flat",
    "IVF4,PQ4x4",
    "IVF4,SQ8",
    "HNSW8",
    "IVF4_HNSW4,Flat",
    "PQ4x4",
    "SQ8",
    "SQfp16",
]


@pytest.mark.parametrize("factory", SUPPORTED_FACTORIES)
def test_faiss_file_check_agrees_with_faiss_and_refuses_every_truncation(tmp_path, factory):
    x = gallery(300, dim=8)
    index = build_faiss_index(x, factory, use_gpu=False)
    file = tmp_path / "x.faiss"
    faiss.write_index(index, str(file))
    read = faiss.read_index(str(file))  # the reference: what FAISS itself reads from the file
    assert eval_index.check_faiss_file(file) == (file.read_bytes()[:4].decode(), read.d, read.ntotal) == (ANY, 8, 300)
    data = file.read_bytes()
    cut = tmp_path / "cut.faiss"
    for n in sorted({*range(0, 64), *range(64, len(data), max(1, len(data) // 300)), len(data) - 1}):
        cut.write_bytes(data[:n])
        with pytest.raises(IndexDirError, match="cut.faiss: "):
            eval_index.check_faiss_file(cut)
    cut.write_bytes(data + b"\0")
    with pytest.raises(IndexDirError, match="1 unexpected bytes"):
        eval_index.check_faiss_file(cut)


def test_factories_whose_files_cannot_be_checked_are_refused_before_training():
    for factory in ("OPQ4,IVF4,PQ4", "IDMap,Flat", "HNSW8_PQ4", "PCA4,Flat", "IVF4,PQ4x4fs"):
        with pytest.raises(IndexBuildError, match="loading cannot check") as err:
            build_faiss_index(gallery(300, dim=8), factory)
        assert "\n" not in str(err.value) and factory in str(err.value)


@pytest.mark.parametrize(
    "name", ["../outside.faiss", "/tmp/elsewhere.faiss", "sub/video_vt.faiss", "..", "", "video_vt.npy"]
)
def test_meta_may_only_name_faiss_files_inside_the_index_folder(tmp_path, monkeypatch, name):
    idx, _, _ = make_index(n=20)
    idx.save(tmp_path / "i")
    outside = tmp_path / "outside.faiss"
    outside.write_bytes((tmp_path / "i" / "video_vt.faiss").read_bytes())  # a valid index, but not the folder's
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    meta["spaces"]["video_vt"]["file"] = name if name != "/tmp/elsewhere.faiss" else str(outside)
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    refuse_read_index(monkeypatch)
    assert "expected a .faiss file inside the index folder" in load_error(tmp_path / "i")


def test_a_symlink_out_of_the_index_folder_is_refused(tmp_path, monkeypatch):
    idx, _, _ = make_index(n=20)
    idx.save(tmp_path / "i")
    moved = tmp_path / "elsewhere.faiss"
    (tmp_path / "i" / "video_vt.faiss").rename(moved)
    (tmp_path / "i" / "video_vt.faiss").symlink_to(moved)
    refuse_read_index(monkeypatch)
    assert "outside the index folder" in load_error(tmp_path / "i")


def test_media_paths_of_items_may_be_absolute(tmp_path):
    """Items point at the gallery's media wherever it lives; only the index's own files are confined."""
    x = gallery(5)
    items = [{"id": str(i), "media": f"/data/videos/{i}.mp4"} for i in range(5)]
    RetrievalIndex.build({"video_vt": x}, items, fingerprint="f").save(tmp_path / "i")
    loaded = RetrievalIndex.load(tmp_path / "i")
    assert loaded.search(x[3:4], 1, fingerprint="f")[0][0].media == "/data/videos/3.mp4"


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.update(nprobe=0), "nprobe 0"),
        (lambda m: m.update(ef_search=10**9), "ef_search 1000000000"),
        (lambda m: m.update(count=5), "counts 5 items"),
        (lambda m: m.pop("spaces"), "no 'spaces'"),
        (lambda m: m["spaces"]["video_vt"].update(dim="24"), "no valid dimension"),
        (lambda m: m["spaces"]["video_vt"].update(dim=25), "expected 20 x 25"),
        (lambda m: m.update(export=7), "export 7 of the wrong type"),
        (lambda m: m.update(fingerprint=["abc123"]), "fingerprint ['abc123'] of the wrong type"),
    ],
)
def test_meta_fields_are_checked(tmp_path, monkeypatch, change, needle):
    idx, _, _ = make_index(n=20)
    idx.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    change(meta)
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    refuse_read_index(monkeypatch)
    assert needle in load_error(tmp_path / "i")


def test_non_utf8_json_and_bad_items_are_one_line(tmp_path):
    idx, _, _ = make_index(n=20)
    idx.save(tmp_path / "i")
    (tmp_path / "i" / "items.json").write_bytes(b'[{"id": "\xff"}]')
    assert "items.json is not UTF-8" in load_error(tmp_path / "i")
    (tmp_path / "i" / "items.json").write_text(json.dumps([1] * 20))
    assert "not a list of objects" in load_error(tmp_path / "i")


def test_k_must_be_positive():
    idx, x, _ = make_index(n=20)
    for k in (0, -3):
        with pytest.raises(ValueError, match=f"k must be >= 1, got {k}"):
            idx.search(x[:1], k, fingerprint="abc123")
