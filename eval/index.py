"""FAISS indexes over an embedded gallery, saved and loaded as one directory.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities. The
default ``"Flat"`` index is exact; for large galleries any FAISS factory string works
(``"IVF1024,Flat"``, ``"IVF1024,PQ32"``, ``"HNSW32"``) with ``nprobe`` / ``ef_search`` as the
speed-recall knobs. When FAISS was built with GPU support and sees a GPU, indexes live there.

An index directory holds::

    meta.json           fingerprint of the model export and its preprocessing, the export path,
                        factory string, search parameters, and one entry per vector space
    items.json          row i of every index -> {"id", "media", ...} (the id-to-media map)
    <space>.faiss       one FAISS index per vector space (e.g. video_vt for text queries,
                        video_va for audio queries), written with faiss.write_index

It is written to a temporary sibling and renamed into place. A query embedded by a model other than
the one that built the index is refused (:class:`FingerprintMismatchError`); a missing or corrupt
directory raises :class:`IndexDirError`, both with one line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from data.rundir import atomic_path

logger = logging.getLogger(__name__)

META = "meta.json"
ITEMS = "items.json"
FORMAT_VERSION = 1


class IndexDirError(ValueError):
    """An index directory that is missing, incomplete or unreadable."""


class IndexBuildError(ValueError):
    """A FAISS factory string that cannot be built or trained on the given vectors."""


class FingerprintMismatchError(ValueError):
    """A query embedded by a different model (or preprocessing) than the one that built the index."""


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based rank, cosine score, row in the gallery and its item record."""

    rank: int
    score: float
    row: int
    item: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.item.get("id", self.row))

    @property
    def media(self) -> str | None:
        return self.item.get("media")


def l2_normalize(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32, C-contiguous, row-wise L2-normalised copy of a (N, D) array (what FAISS wants)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a (N, D) array of vectors, got shape {out.shape}")
    faiss.normalize_L2(out)
    return out


def gpu_available() -> bool:
    """FAISS's GPU build is installed and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set ``nprobe`` (IVF) and ``efSearch`` (HNSW) where the index has them; others are ignored."""
    on_gpu = _is_gpu(index)
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    if nprobe is not None and _has_ivf(index):
        space.set_index_parameter(index, "nprobe", int(nprobe))
    if ef_search is not None and _has_hnsw(index):
        space.set_index_parameter(index, "efSearch", int(ef_search))


def build_faiss_index(
    vectors: np.ndarray | torch.Tensor,
    factory: str = "Flat",
    *,
    nprobe: int | None = None,
    ef_search: int | None = None,
    use_gpu: bool | None = None,
    normalized: bool = False,
    train_size: int | None = None,
    seed: int = 0,
) -> faiss.Index:
    """Train (if needed) and fill an inner-product index from (N, D) vectors, L2-normalised here.

    ``use_gpu=None`` means "when available". Pass ``normalized=True`` for vectors that already are (saves a
    copy). ``train_size`` caps the training sample (drawn with ``seed``): k-means over millions of vectors is
    slow and about 40-250 vectors per IVF list are enough.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32) if normalized else l2_normalize(vectors)
    n, dim = x.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"invalid FAISS factory string {factory!r}: {_first_line(exc)}") from None
    _no_polysemous_training(index)
    if use_gpu or (use_gpu is None and gpu_available()):
        index = _to_gpu(index)
    if not index.is_trained:
        nlist = _nlist(index)
        if nlist is not None and n < nlist:
            raise IndexBuildError(
                f"{factory!r} has {nlist} lists but the gallery has only {n} vectors; "
                f"use fewer lists (about n/39 or less) or the exact 'Flat' index"
            )
        if train_size is not None and nlist is not None and train_size < nlist:
            raise IndexBuildError(f"train_size {train_size} is smaller than the {nlist} lists of {factory!r}")
        sample = x
        if train_size is not None and n > train_size:
            sample = x[np.sort(np.random.default_rng(seed).choice(n, train_size, replace=False))]
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise IndexBuildError(f"could not train {factory!r} on {n} vectors: {_first_line(exc)}") from None
    index.add(x)
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    return index


class RetrievalIndex:
    """One gallery (``items``) with a FAISS index per vector space, plus the fingerprint that made it."""

    def __init__(self, indexes: Mapping[str, faiss.Index], items: Sequence[Mapping[str, Any]], meta: dict[str, Any]):
        self.indexes = dict(indexes)
        self.items = [dict(it) for it in items]
        self.meta = meta
        for name, index in self.indexes.items():
            if index.ntotal != len(self.items):
                raise ValueError(f"index {name!r} holds {index.ntotal} vectors but there are {len(self.items)} items")

    @classmethod
    def build(
        cls,
        vectors: Mapping[str, np.ndarray | torch.Tensor],
        items: Sequence[Mapping[str, Any]],
        *,
        fingerprint: str | None,
        preprocess: Mapping[str, Any] | None = None,
        export: str | Path | None = None,
        factory: str = "Flat",
        nprobe: int | None = None,
        ef_search: int | None = None,
        use_gpu: bool | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> RetrievalIndex:
        """Index each named (N, D) array in ``vectors``; row i of every array is ``items[i]``."""
        indexes = {}
        for name, vecs in vectors.items():
            if len(vecs) != len(items):
                raise ValueError(f"space {name!r} has {len(vecs)} vectors for {len(items)} items")
            indexes[name] = build_faiss_index(vecs, factory, nprobe=nprobe, ef_search=ef_search, use_gpu=use_gpu)
            logger.info("indexed %d vectors of space %s (%s)", len(vecs), name, factory)
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "preprocess": dict(preprocess or {}),
            "export": str(Path(export).resolve()) if export is not None else None,
            "factory": factory,
            "nprobe": nprobe,
            "ef_search": ef_search,
            "spaces": {name: {"dim": int(idx.d), "file": f"{name}.faiss"} for name, idx in indexes.items()},
            "count": len(items),
            "extra": dict(extra or {}),
        }
        return cls(indexes, items, meta)

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    @property
    def spaces(self) -> list[str]:
        return list(self.indexes)

    def __len__(self) -> int:
        return len(self.items)

    def check_fingerprint(self, fingerprint: str | None) -> None:
        """Refuse queries embedded by a model other than the one that built the index."""
        if fingerprint != self.fingerprint:
            where = f" ({self.meta['export']})" if self.meta.get("export") else ""
            raise FingerprintMismatchError(
                f"index was built with model export {self.fingerprint}{where} but the query was embedded with "
                f"{fingerprint}; query with the export that built it or rebuild the index"
            )

    def search(
        self, queries: np.ndarray | torch.Tensor, k: int, *, fingerprint: str | None, space: str | None = None
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each (Q, D) query (L2-normalised here) in vector ``space`` (default: the first)."""
        self.check_fingerprint(fingerprint)
        space = space or self.spaces[0]
        if space not in self.indexes:
            raise KeyError(f"index has no vector space {space!r}; it has {', '.join(self.spaces)}")
        index = self.indexes[space]
        q = l2_normalize(queries)
        if q.shape[1] != index.d:
            raise ValueError(f"queries have dimension {q.shape[1]} but space {space!r} has {index.d}")
        scores, rows = index.search(q, min(k, index.ntotal))  # (Q, k) each
        out = []
        for srow, rrow in zip(scores, rows):
            hits = [
                Hit(rank=j + 1, score=float(s), row=int(r), item=self.items[r])
                for j, (s, r) in enumerate(zip(srow, rrow))
                if r >= 0  # approximate indexes may return fewer than k results (-1 rows)
            ]
            out.append(hits)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically (GPU indexes are copied to the CPU first)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            for name, index in self.indexes.items():
                cpu = faiss.index_gpu_to_cpu(index) if _is_gpu(index) else index
                faiss.write_index(cpu, str(tmp / self.meta["spaces"][name]["file"]))
            (tmp / ITEMS).write_text(json.dumps(self.items, indent=1) + "\n")
            (tmp / META).write_text(json.dumps(self.meta, indent=2) + "\n")
        logger.info("saved index of %d items to %s", len(self), path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, use_gpu: bool | None = None) -> RetrievalIndex:
        """Read an index directory written by :meth:`save`; raises :class:`IndexDirError` with one line."""
        path = Path(path)
        if not (path / META).is_file():
            raise IndexDirError(f"index directory {str(path)!r} not found: expected a directory with {META}")
        try:
            meta = json.loads((path / META).read_text())
            items = json.loads((path / ITEMS).read_text())
            if meta.get("format") != FORMAT_VERSION or not isinstance(items, list):
                raise ValueError(f"unknown format {meta.get('format')!r}")
            indexes = {}
            for name, spec in meta["spaces"].items():
                index = faiss.read_index(str(path / spec["file"]))
                if index.d != spec["dim"] or index.ntotal != len(items) or len(items) != meta["count"]:
                    raise ValueError(f"{spec['file']} holds {index.ntotal} x {index.d}, expected {len(items)}")
                if use_gpu or (use_gpu is None and gpu_available()):
                    index = _to_gpu(index)
                set_search_params(index, nprobe=meta.get("nprobe"), ef_search=meta.get("ef_search"))
                indexes[name] = index
            return cls(indexes, items, meta)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexDirError(f"index directory {str(path)!r} is corrupt: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The readable part of an exception: FAISS messages lose their C++ signature and source location."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    failed = re.search(r"failed: (.*)$", line)
    if failed:
        return failed.group(1)
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", line)


def _is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__ or isinstance(index, (faiss.IndexReplicas, faiss.IndexShards))


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Move to every visible GPU; index types FAISS cannot put on a GPU (e.g. HNSW) stay on the CPU."""
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError) as exc:
        logger.warning("keeping the %s index on the CPU: %s", type(index).__name__, _first_line(exc))
        return index


def _has_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return "IVF" in type(index).__name__


def _nlist(index: faiss.Index) -> int | None:
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:
        return getattr(index, "nlist", None)


def _no_polysemous_training(index: faiss.Index) -> None:
    """PQ indexes train a code ordering for Hamming-filtered search by default; we never use that search,
    and the (simulated annealing) training costs seconds even on tiny galleries."""
    for sub in (index, faiss.downcast_index(index)):
        if hasattr(sub, "do_polysemous_training"):
            sub.do_polysemous_training = False
    try:
        ivf = faiss.extract_index_ivf(index)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
    except RuntimeError:
        pass


def _has_hnsw(index: faiss.Index) -> bool:
    return hasattr(faiss.downcast_index(index), "hnsw")
