"""FAISS indexes over an embedded gallery, saved and loaded as one directory.

Vectors are L2-normalised and searched by inner product, so scores are cosine similarities. The
default ``"Flat"`` index is exact; for large galleries a FAISS factory string of a type that loading
can check (``"IVF1024,Flat"``, ``"IVF1024,PQ32"``, ``"IVF1024,SQ8"``, ``"HNSW32"``, ``"PQ32"``) with
``nprobe`` / ``ef_search`` as the speed-recall knobs. When FAISS was built with GPU support and sees a
GPU, indexes live there.

An index directory holds::

    meta.json           fingerprint of the model export and its preprocessing, the export path,
                        factory string, search parameters, and one entry per vector space
    items.json          row i of every index -> {"id", "media", ...} (the id-to-media map)
    <space>.faiss       one FAISS index per vector space (e.g. video_vt for text queries,
                        video_va for audio queries), written with faiss.write_index

It is written to a temporary sibling and renamed into place; an existing folder is only replaced when
this project wrote it (:func:`data.files.check_output_path`). A query embedded by a model other than
the one that built the index is refused (:class:`FingerprintMismatchError`); a missing or corrupt
directory raises :class:`IndexDirError`, both with one line.

Loading trusts nothing in the folder: ``meta.json`` may only name ``.faiss`` files inside it, and each
file is walked (:func:`check_faiss_file`) before ``faiss.read_index`` sees it, because FAISS allocates
whatever sizes a file declares before it finds out the file is too short. So only the index types
this project builds are loaded: flat, PQ, SQ, IVF over those, and HNSW over flat storage, all
inner-product.
"""

from __future__ import annotations

import io
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

from data.files import atomic_path, check_output_path
from eval.faiss_file import MAX_EF_SEARCH, IndexDirError, check_faiss_file, walk_faiss

logger = logging.getLogger(__name__)

META = "meta.json"
ITEMS = "items.json"
FORMAT_VERSION = 1


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
    if nprobe is not None and nprobe < 1:
        raise IndexBuildError(f"nprobe must be >= 1, got {nprobe}")
    if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
        raise IndexBuildError(f"ef_search must be in 1..{MAX_EF_SEARCH}, got {ef_search}")
    x = np.ascontiguousarray(vectors, dtype=np.float32) if normalized else l2_normalize(vectors)
    n, dim = x.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"invalid FAISS factory string {factory!r}: {_first_line(exc)}") from None
    _check_loadable(index, factory)
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
            if not isinstance(name, str) or not _is_file_name(f"{name}.faiss"):
                raise ValueError(f"space name {name!r} cannot be a file name")
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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        space = space or self.spaces[0]
        if space not in self.indexes:
            raise KeyError(f"index has no vector space {space!r}; it has {', '.join(self.spaces)}")
        index = self.indexes[space]
        q = l2_normalize(queries)
        if q.shape[1] != index.d:
            raise ValueError(f"queries have dimension {q.shape[1]} but space {space!r} has {index.d}")
        scores, rows = index.search(q, min(k, index.ntotal))  # (Q, k) each
        if rows.size and rows.max() >= len(self.items):
            raise IndexDirError(
                f"space {space!r} returned row {rows.max()} of a gallery of {len(self.items)}: corrupt index"
            )
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
        """Write the index directory atomically (GPU indexes are copied to the CPU first).

        Refuses (:class:`data.files.OutputPathError`) an existing file or a folder this project did not
        write at ``path``, leaving it untouched.
        """
        path = check_output_path(path, "dir")
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
        """Read an index directory written by :meth:`save`; raises :class:`IndexDirError` with one line.

        ``meta.json`` and ``items.json`` are checked field by field, the FAISS files it names must lie in
        the folder, and each is walked by :func:`check_faiss_file` before FAISS reads it.
        """
        path = Path(path)
        if not (path / META).is_file():
            raise IndexDirError(f"index directory {str(path)!r} not found: expected a directory with {META}")
        try:
            meta = _read_json(path / META)
            items = _read_json(path / ITEMS)
            _check_meta(meta, items)
            indexes = {}
            for name, spec in meta["spaces"].items():
                file = path / spec["file"]
                if file.resolve().parent != path.resolve():  # a symlink out of the folder
                    raise ValueError(f"{spec['file']} resolves to a file outside the index folder")
                _, dim, count = check_faiss_file(file)
                if (dim, count) != (spec["dim"], len(items)):
                    raise ValueError(f"{spec['file']} holds {count} x {dim}, expected {len(items)} x {spec['dim']}")
                index = faiss.read_index(str(file))
                if index.d != spec["dim"] or index.ntotal != len(items):
                    raise ValueError(f"{spec['file']} holds {index.ntotal} x {index.d}, expected {len(items)}")
                if use_gpu or (use_gpu is None and gpu_available()):
                    index = _to_gpu(index)
                set_search_params(index, nprobe=meta["nprobe"], ef_search=meta["ef_search"])
                indexes[name] = index
            return cls(indexes, items, meta)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IndexDirError(f"index directory {str(path)!r} is corrupt: {_first_line(exc)}") from None


def _read_json(file: Path) -> Any:
    """A JSON file's content; a ValueError naming the file otherwise."""
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file.name} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file.name} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None


def _check_meta(meta: Any, items: Any) -> None:
    """Raise ValueError (one line) unless ``meta.json`` and ``items.json`` are what :meth:`save` writes.

    ``spaces[*].file`` are files of the index itself, so they must be plain names inside its folder;
    the export path and the items' media paths point outside by design and are only type-checked.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{META} is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{META} has unknown format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    for key in ("spaces", "count", "nprobe", "ef_search"):
        if key not in meta:
            raise ValueError(f"{META} has no {key!r}")
    for key, types in (("fingerprint", (str, type(None))), ("export", (str, type(None))), ("extra", dict)):
        if not isinstance(meta.get(key), types):
            raise ValueError(f"{META} has {key} {meta.get(key)!r} of the wrong type")
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise ValueError(f"{ITEMS} is not a list of objects")
    if any(not isinstance(it.get("media", ""), (str, type(None))) for it in items):
        raise ValueError(f"{ITEMS} has a media path that is not a string")
    if not _is_int(meta["count"]) or meta["count"] != len(items):
        raise ValueError(f"{META} counts {meta['count']!r} items but {ITEMS} has {len(items)}")
    for key, top in (("nprobe", None), ("ef_search", MAX_EF_SEARCH)):
        value = meta[key]
        if value is not None and not (_is_int(value) and value >= 1 and (top is None or value <= top)):
            raise ValueError(f"{META} has {key} {value!r}, expected null or an integer >= 1")
    spaces = meta["spaces"]
    if not isinstance(spaces, dict) or not spaces:
        raise ValueError(f"{META} has no vector spaces")
    for name, spec in spaces.items():
        if not isinstance(spec, dict) or not _is_int(spec.get("dim")) or spec["dim"] < 1:
            raise ValueError(f"{META} space {name!r} has no valid dimension")
        file = spec.get("file")
        if not isinstance(file, str) or not _is_file_name(file) or not file.endswith(".faiss"):
            raise ValueError(
                f"{META} space {name!r} names file {file!r}; expected a .faiss file inside the index folder"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_file_name(name: str) -> bool:
    """A plain file name: no folder part, no ``..``, not absolute (on any platform)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


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


# ---------------------------------------------------------------------------------------------------
# FAISS files, checked before faiss.read_index. The layout is FAISS's (faiss/impl/index_write.cpp):
# little-endian scalars, and vectors as a uint64 count followed by the items. Every count is checked
# against the bytes left in the file before anything is read, so a short or crafted file is refused
# having cost a few small reads, and the walk must end exactly at the end of the file.


def _check_loadable(index: faiss.Index, factory: str) -> None:
    """Refuse, before training, a factory whose index type :func:`check_faiss_file` cannot check."""
    data = faiss.serialize_index(index).tobytes()  # still empty: a few bytes (its PQ/SQ tables at most)
    try:
        walk_faiss(io.BytesIO(data), len(data), factory, untrained=True)
    except IndexDirError as exc:
        reason = str(exc).split(": ", 1)[1].split(";")[0]
        raise IndexBuildError(
            f"FAISS factory string {factory!r} builds an index that loading cannot check ({reason}); "
            "use Flat, PQm, SQ8, IVFn,Flat, IVFn,PQm, IVFn,SQ8 or HNSWm"
        ) from None
