"""Retrieval metrics as papers report them: R@1/5/10 (percent), median and mean rank (1-based).

One function covers every direction. Each query and each gallery item carries a label (the index of
the source video); a gallery item is correct for a query when their labels are equal:

- text -> video: queries are captions labelled by their video, the gallery is the videos (labels
  ``0..V-1``); a video with several captions gives one query per caption.
- video -> text: queries are the videos, the gallery is every caption; a video counts the
  best-ranked of its captions (CLIP4Clip's multi-sentence convention).
- video <-> audio: one audio per video, labels ``0..V-1`` on both sides.

Ties are ranked pessimistically: the rank of a query is one plus the number of *wrong* gallery items
scoring at least as high as its best correct item, so a wrong item with the same score always comes
first and a tie never helps. (CLIP4Clip's argsort-based lookup lets ties fall either way.) The score
matrix is computed in chunks of queries against the whole gallery, so the metrics are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

RECALL_KS: tuple[int, ...] = (1, 5, 10)


def ranks_from_scores(
    scores: np.ndarray | torch.Tensor,
    query_labels: Sequence[int] | np.ndarray | torch.Tensor,
    gallery_labels: Sequence[int] | np.ndarray | torch.Tensor,
) -> np.ndarray:
    """1-based pessimistic rank of the best correct gallery item for each query; ``scores`` is (Q, G)."""
    scores_t = torch.as_tensor(scores)
    q_lab = torch.as_tensor(np.asarray(query_labels), dtype=torch.int64)
    g_lab = torch.as_tensor(np.asarray(gallery_labels), dtype=torch.int64)
    if scores_t.ndim != 2 or scores_t.shape != (len(q_lab), len(g_lab)):
        shape = tuple(scores_t.shape)
        raise ValueError(f"scores of shape {shape} do not match {len(q_lab)} queries x {len(g_lab)} items")
    correct = q_lab[:, None] == g_lab[None, :]  # (Q, G)
    has_correct = correct.any(dim=1)
    if not bool(has_correct.all()):
        bad = int(torch.nonzero(~has_correct)[0, 0])
        raise ValueError(f"query {bad} (label {int(q_lab[bad])}) has no correct item in the gallery")
    best = scores_t.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    ahead = (scores_t >= best) & ~correct  # wrong items at or above the best correct one
    return (ahead.sum(dim=1) + 1).numpy().astype(np.int64)


def ranks_from_embeddings(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    query_labels: Sequence[int] | np.ndarray | torch.Tensor,
    gallery_labels: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Ranks by inner product of (Q, D) queries against the whole (G, D) gallery, ``chunk_size`` queries at a time."""
    q = torch.as_tensor(queries, dtype=torch.float32)
    g = torch.as_tensor(gallery, dtype=torch.float32)
    q_lab = np.asarray(query_labels)
    chunk_size = max(1, min(chunk_size, (1 << 25) // max(1, len(g))))  # (chunk, G) temporaries stay ~100 MB
    out = []
    for start in range(0, len(q), chunk_size):
        scores = q[start : start + chunk_size] @ g.T  # (chunk, G)
        out.append(ranks_from_scores(scores, q_lab[start : start + chunk_size], gallery_labels))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def rank_metrics(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``R@k`` (percent of queries with rank <= k), ``MedR``, ``MnR`` and ``num_queries`` from 1-based ranks."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        raise ValueError("no queries to compute retrieval metrics over")
    out = {f"R@{k}": float(100.0 * np.mean(r <= k)) for k in ks}
    out["MedR"] = float(np.median(r))
    out["MnR"] = float(np.mean(r))
    out["num_queries"] = int(r.size)
    return out


def retrieval_metrics(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor,
    query_labels: Sequence[int] | np.ndarray | torch.Tensor,
    gallery_labels: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Exact R@1/5/10, MedR and MnR of ``queries`` against the whole ``gallery`` (inner product)."""
    return rank_metrics(ranks_from_embeddings(queries, gallery, query_labels, gallery_labels, chunk_size=chunk_size))


def text_video_metrics(
    text: np.ndarray | torch.Tensor,
    video: np.ndarray | torch.Tensor,
    caption_video: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    chunk_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """``{"t2v", "v2t"}`` metrics; ``caption_video[i]`` is the row of ``video`` that caption ``i`` describes.

    Videos without any caption are left out of the video -> text queries (they stay in the t2v gallery).
    """
    cap_vid = np.asarray(caption_video, dtype=np.int64)
    vid_labels = np.arange(len(video))
    t2v = retrieval_metrics(text, video, cap_vid, vid_labels, chunk_size=chunk_size)
    with_text = np.unique(cap_vid)
    v2t = retrieval_metrics(torch.as_tensor(video)[with_text], text, with_text, cap_vid, chunk_size=chunk_size)
    return {"t2v": t2v, "v2t": v2t}


def paired_metrics(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, *, chunk_size: int = 1024
) -> dict[str, float]:
    """Metrics of ``a[i]`` retrieving ``b[i]`` among all rows of ``b`` (one item per video, e.g. video -> audio)."""
    labels = np.arange(len(a))
    return retrieval_metrics(a, b, labels, labels, chunk_size=chunk_size)


def mean_pairwise_cosine(x: np.ndarray | torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows: near 1 when embeddings have collapsed."""
    x = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)
    n = len(x)
    if n < 2:
        raise ValueError(f"the mean pairwise cosine needs at least 2 embeddings, got {n}")
    total = x.sum(0)
    return float((total @ total - (x * x).sum()) / (n * (n - 1)))  # sum over i != j of x_i . x_j


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per direction (``t2v``, ``v2t``, ...), one column per metric.

    A ``cosine`` entry (mean pairwise cosine per embedding space) follows the table on a line of its own.
    """
    cols = [f"R@{k}" for k in RECALL_KS] + ["MedR", "MnR", "num_queries"]
    head = f"{'task':<6}" + "".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    for task, m in results.items():
        if task == "cosine":
            continue
        cells = []
        for c in cols:
            v = m.get(c)
            cells.append(f"{'-':>12}" if v is None else f"{v:>12d}" if c == "num_queries" else f"{v:>12.2f}")
        lines.append(f"{task:<6}" + "".join(cells))
    if "cosine" in results:
        spaces = ", ".join(f"{k} {v:.3f}" for k, v in results["cosine"].items())
        lines.append(f"mean pairwise cosine of the embeddings: {spaces}")
    return "\n".join(lines)
