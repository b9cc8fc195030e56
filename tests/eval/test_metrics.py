"""Retrieval metrics against a brute-force numpy reference (sort each row, ties broken against the query)."""

import numpy as np
import pytest
import torch

from eval.metrics import (
    format_table,
    mean_pairwise_cosine,
    paired_metrics,
    rank_metrics,
    ranks_from_embeddings,
    ranks_from_scores,
    text_video_metrics,
)


def reference_ranks(scores: np.ndarray, q_lab: np.ndarray, g_lab: np.ndarray) -> np.ndarray:
    """Sort the gallery by score, wrong items first among equal scores; rank of the first correct item."""
    ranks = []
    for row, lab in zip(scores, q_lab):
        correct = g_lab == lab
        order = np.lexsort((correct, -row))  # primary: score descending; secondary: wrong (False) first
        ranks.append(int(np.flatnonzero(correct[order])[0]) + 1)
    return np.array(ranks)


def reference_metrics(ranks: np.ndarray) -> dict:
    n = len(ranks)
    out = {f"R@{k}": 100.0 * sum(1 for r in ranks if r <= k) / n for k in (1, 5, 10)}
    s = sorted(ranks)
    out["MedR"] = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    out["MnR"] = sum(ranks) / n
    return out


def assert_metrics_equal(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_tiny_hand_example_with_ties():
    # gallery items 0..3, query label 2; item 2 ties with item 0 and 3 is higher -> pessimistic rank 3
    scores = np.array([[0.5, 0.1, 0.5, 0.9]])
    assert ranks_from_scores(scores, [2], [0, 1, 2, 3]).tolist() == [3]
    # two correct items: the best (0.7) counts; only the wrong item at 0.9 is ahead; the tied correct one is not
    scores = np.array([[0.7, 0.9, 0.7, 0.2]])
    assert ranks_from_scores(scores, [5], [5, 1, 5, 2]).tolist() == [2]


@pytest.mark.parametrize("seed", range(5))
def test_ranks_match_brute_force_with_deliberate_ties(seed):
    rng = np.random.default_rng(seed)
    num_videos, num_caps = 37, 120
    cap_vid = rng.integers(0, num_videos, num_caps)
    # integer scores in a narrow range: most rows have many exact ties, including with the correct item
    scores = rng.integers(0, 6, (num_caps, num_videos)).astype(np.float32)
    t2v = ranks_from_scores(scores, cap_vid, np.arange(num_videos))
    np.testing.assert_array_equal(t2v, reference_ranks(scores, cap_vid, np.arange(num_videos)))
    with_text = np.unique(cap_vid)
    v2t_scores = scores.T[with_text]
    v2t = ranks_from_scores(v2t_scores, with_text, cap_vid)
    np.testing.assert_array_equal(v2t, reference_ranks(v2t_scores, with_text, cap_vid))
    assert (t2v >= 1).all() and (t2v <= num_videos).all()


@pytest.mark.parametrize("seed", range(3))
def test_text_video_metrics_match_reference_on_embeddings_with_duplicates(seed):
    rng = np.random.default_rng(100 + seed)
    num_videos, dim = 50, 8
    video = rng.standard_normal((num_videos, dim)).astype(np.float32)
    video[10] = video[11]  # duplicate videos: every text query of 10 or 11 ties with the other one
    video[20] = video[21] = video[22]
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    # 1..5 captions per video, some videos with none; captions near their video plus duplicated captions
    counts = rng.integers(0, 6, num_videos)
    counts[[10, 11, 20]] = 2
    cap_vid = np.repeat(np.arange(num_videos), counts)
    text = video[cap_vid] + 0.8 * rng.standard_normal((len(cap_vid), dim)).astype(np.float32)
    text[5] = text[6]
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    got = text_video_metrics(text, video, cap_vid, chunk_size=7)

    scores = text.astype(np.float64) @ video.astype(np.float64).T
    # float32 rounding can differ from float64 for near-equal scores; compare on the same float32 matrix
    scores32 = (text @ video.T).astype(np.float32)
    want_t2v = reference_ranks(scores32, cap_vid, np.arange(num_videos))
    with_text = np.unique(cap_vid)
    want_v2t = reference_ranks(scores32.T[with_text], with_text, cap_vid)
    assert_metrics_equal(got["t2v"], reference_metrics(want_t2v))
    assert_metrics_equal(got["v2t"], reference_metrics(want_v2t))
    assert got["t2v"]["num_queries"] == len(cap_vid)
    assert got["v2t"]["num_queries"] == len(with_text) < num_videos
    # the duplicated videos really tie in float64 too, and the tie is counted against the query
    assert scores[cap_vid == 10][:, 10] == pytest.approx(scores[cap_vid == 10][:, 11])
    r = ranks_from_embeddings(text[cap_vid == 10], video, [10, 10], np.arange(num_videos))
    assert (r >= 2).all()


def test_chunking_does_not_change_ranks():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((101, 16)).astype(np.float32)
    g = rng.standard_normal((33, 16)).astype(np.float32)
    lab = rng.integers(0, 33, 101)
    full = ranks_from_embeddings(q, g, lab, np.arange(33), chunk_size=1000)
    for chunk in (1, 10, 64):
        np.testing.assert_array_equal(ranks_from_embeddings(q, g, lab, np.arange(33), chunk_size=chunk), full)
    np.testing.assert_array_equal(full, reference_ranks(q @ g.T, lab, np.arange(33)))


def test_paired_metrics_video_audio_both_directions():
    rng = np.random.default_rng(3)
    v = rng.standard_normal((40, 6)).astype(np.float32)
    a = v + 1.0 * rng.standard_normal((40, 6)).astype(np.float32)
    lab = np.arange(40)
    v2a = paired_metrics(v, a)
    a2v = paired_metrics(a, v)
    assert_metrics_equal(v2a, reference_metrics(reference_ranks(v @ a.T, lab, lab)))
    assert_metrics_equal(a2v, reference_metrics(reference_ranks(a @ v.T, lab, lab)))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    perfect = paired_metrics(v, v)
    assert perfect["R@1"] == 100.0 and perfect["MedR"] == 1.0 and perfect["MnR"] == 1.0


def test_rank_metrics_values_and_errors():
    m = rank_metrics([1, 2, 6, 11, 3, 1])
    assert m["R@1"] == pytest.approx(100 * 2 / 6)
    assert m["R@5"] == pytest.approx(100 * 4 / 6)
    assert m["R@10"] == pytest.approx(100 * 5 / 6)
    assert m["MedR"] == 2.5 and m["MnR"] == pytest.approx(24 / 6) and m["num_queries"] == 6
    with pytest.raises(ValueError, match="no queries"):
        rank_metrics([])
    with pytest.raises(ValueError, match="no correct item"):
        ranks_from_scores(np.zeros((1, 3)), [9], [0, 1, 2])
    table = format_table({"t2v": m})
    assert "R@10" in table and "t2v" in table and "83.33" in table


def test_mean_pairwise_cosine():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    pairs = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(3.0 * x) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert mean_pairwise_cosine(torch.ones(4, 3) + 1e-4 * x[:4, :3]) == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_cosine(torch.cat([x, -x])) < 0  # every row has its opposite
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(x[:1])
