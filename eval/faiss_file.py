"""The FAISS file format, walked with bounded reads before FAISS itself reads a file.

``faiss.read_index`` allocates whatever sizes a file declares before it finds out the file is too
short, so a 109-byte file can make it allocate a gigabyte. :func:`check_faiss_file` reads only the
headers and sizes, checks each declared length against the bytes left and the values FAISS trusts
when searching, and accepts only the index types this project builds (flat, PQ, SQ, IVF over those,
HNSW over flat storage, all inner-product).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


class IndexDirError(ValueError):
    """An index directory that is missing, incomplete or unreadable."""


_METRIC_INNER_PRODUCT = 0
_DIRECT_MAP_HASHTABLE = 2
MAX_EF_SEARCH = 1 << 16  # HNSW search breadth: FAISS sizes its candidate heaps by it


class _FaissReader:
    """Bounded reads of one FAISS file; every failure is an :class:`IndexDirError` naming the file."""

    def __init__(self, f: BinaryIO, size: int, name: str, untrained: bool = False) -> None:
        self.f, self.size, self.name, self.pos = f, size, name, 0
        self.untrained = untrained  # an index straight from the factory: its IVF quantizer is still empty

    def fail(self, problem: str) -> IndexDirError:
        return IndexDirError(f"{self.name}: {problem}")

    def left(self) -> int:
        return self.size - self.pos

    def bytes(self, n: int, what: str) -> bytes:
        self._need(n, what)
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"{what}: the file changed while it was read")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self._need(n, what)
        self.f.seek(n, 1)
        self.pos += n

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.bytes(struct.calcsize(fmt), what))[0]

    def count(self, itemsize: int, what: str, expected: int | None = None) -> int:
        """A vector's item count, checked to fit in the rest of the file (and to equal ``expected``)."""
        n = self.scalar("Q", what)
        if n > self.left() // itemsize:
            raise self.fail(
                f"{what} declares {n} items of {itemsize} bytes but only {self.left()} bytes follow "
                "(truncated or not written by this project)"
            )
        if expected is not None and n != expected:
            raise self.fail(f"{what} holds {n} items, expected {expected}")
        return n

    def array(self, dtype: str, what: str, expected: int | None = None) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        n = self.count(itemsize, what, expected)
        return np.frombuffer(self.bytes(n * itemsize, what), dtype="<" + dtype)

    def skip_vector(self, itemsize: int, what: str, expected: int | None = None) -> None:
        self.skip(self.count(itemsize, what, expected) * itemsize, what)

    def _need(self, n: int, what: str) -> None:
        if n > self.left():
            raise self.fail(f"{what} needs {n} bytes at offset {self.pos} but only {self.left()} follow (truncated)")


@dataclass(frozen=True)
class _IndexHeader:
    fourcc: str
    d: int
    ntotal: int


def _read_index_header(r: _FaissReader, fourcc: str) -> _IndexHeader:
    d = r.scalar("i", "dimension")
    ntotal = r.scalar("q", "vector count")
    r.skip(16, "header")  # two unused int64 fields
    trained = r.scalar("?", "is_trained")
    metric = r.scalar("i", "metric")
    if d < 1 or ntotal < 0:
        raise r.fail(f"{fourcc} index declares dimension {d} and {ntotal} vectors")
    if not trained and not r.untrained:
        raise r.fail(f"{fourcc} index is not trained")
    if metric != _METRIC_INNER_PRODUCT:
        raise r.fail(f"{fourcc} index uses metric {metric}; this project writes inner-product indexes only")
    return _IndexHeader(fourcc, d, ntotal)


def _read_flat(r: _FaissReader, h: _IndexHeader) -> None:
    r.skip_vector(4, f"flat vectors ({h.ntotal} x {h.d} floats)", expected=h.ntotal * h.d)


def _read_pq(r: _FaissReader, d: int) -> int:
    """A product quantizer; returns its code size in bytes."""
    pq_d, m, nbits = (r.scalar("Q", f"PQ {k}") for k in ("dimension", "M", "nbits"))
    if pq_d != d or not 1 <= m <= d or d % m or not 1 <= nbits <= 16:
        raise r.fail(f"PQ of dimension {pq_d}, M {m}, nbits {nbits} does not fit vectors of dimension {d}")
    r.skip_vector(4, "PQ centroids", expected=d << nbits)
    return (m * nbits + 7) // 8


def _read_sq(r: _FaissReader, d: int) -> int:
    """A scalar quantizer; returns its code size in bytes."""
    qtype = r.scalar("i", "SQ type")
    r.skip(8, "SQ range statistic")  # rangestat (int32), rangestat_arg (float)
    sq_d, code_size = r.scalar("Q", "SQ dimension"), r.scalar("Q", "SQ code size")
    if qtype not in _SQ_LAYOUTS:
        raise r.fail(f"SQ of type {qtype}; this project reads types {sorted(_SQ_LAYOUTS)} (SQ8, SQ4, SQ6, SQfp16, ...)")
    # FAISS recomputes the code size from the type, so the stored one must agree with it.
    want_code, want_trained = _SQ_LAYOUTS[qtype](d)
    if sq_d != d or code_size != want_code:
        raise r.fail(f"SQ of dimension {sq_d} and code size {code_size} does not fit vectors of dimension {d}")
    n_trained = r.count(4, "SQ ranges")
    if n_trained != want_trained and not (r.untrained and n_trained == 0):
        raise r.fail(f"SQ ranges hold {n_trained} floats, expected {want_trained}")
    r.skip(4 * n_trained, "SQ ranges")
    return code_size


# ScalarQuantizer.QT_* -> (code size, trained floats) for dimension d.
_SQ_LAYOUTS = {
    0: lambda d: (d, 2 * d),  # QT_8bit
    1: lambda d: ((d + 1) // 2, 2 * d),  # QT_4bit
    2: lambda d: (d, 2),  # QT_8bit_uniform
    3: lambda d: ((d + 1) // 2, 2),  # QT_4bit_uniform
    4: lambda d: (2 * d, 0),  # QT_fp16
    5: lambda d: (d, 0),  # QT_8bit_direct
    6: lambda d: ((6 * d + 7) // 8, 2 * d),  # QT_6bit
    7: lambda d: (2 * d, 0),  # QT_bf16
    8: lambda d: (d, 0),  # QT_8bit_direct_signed
}


def _read_index_pq(r: _FaissReader, h: _IndexHeader) -> None:
    code_size = _read_pq(r, h.d)
    r.skip_vector(1, "PQ codes", expected=h.ntotal * code_size)
    if r.scalar("i", "PQ search type") != 0:  # ST_PQ; the others need tables that are not stored
        raise r.fail("PQ index with a search type other than plain PQ")
    r.skip(5, "PQ search settings")  # encode_signs (bool), polysemous_ht (int32)


def _read_index_sq(r: _FaissReader, h: _IndexHeader) -> None:
    code_size = _read_sq(r, h.d)
    r.skip_vector(1, "SQ codes", expected=h.ntotal * code_size)


def _read_hnsw(r: _FaissReader, h: _IndexHeader) -> None:
    """HNSW graph, then its flat storage. The search follows the graph without bounds checks, so the
    levels, offsets and neighbour ids must be consistent and the search breadth sane."""
    r.skip_vector(8, "HNSW level probabilities")
    cum = r.array("i4", "HNSW neighbours per level").astype(np.int64)
    levels = r.array("i4", "HNSW node levels", expected=h.ntotal).astype(np.int64)
    offsets = r.array("u8", "HNSW offsets", expected=h.ntotal + 1)
    n_neighbors = r.count(4, "HNSW neighbours", expected=int(offsets[-1]))
    if (
        len(cum) < 1
        or cum[0] != 0
        or np.any(np.diff(cum) < 0)
        or (h.ntotal and (levels.min() < 1 or levels.max() >= len(cum)))
        or offsets[0] != 0
        or not np.array_equal(np.diff(offsets.astype(np.int64)), cum[levels] if h.ntotal else levels)
    ):
        raise r.fail("HNSW levels and offsets are inconsistent")
    chunk = 1 << 22
    for start in range(0, n_neighbors, chunk):
        ids = np.frombuffer(r.bytes(4 * min(chunk, n_neighbors - start), "HNSW neighbours"), "<i4")
        if ids.min() < -1 or ids.max() >= h.ntotal:
            raise r.fail(f"HNSW neighbour ids outside the {h.ntotal} vectors")
    entry, max_level = r.scalar("i", "HNSW entry point"), r.scalar("i", "HNSW max level")
    ef_construction, ef_search = r.scalar("i", "HNSW efConstruction"), r.scalar("i", "HNSW efSearch")
    r.skip(4, "HNSW header")  # an unused int32
    if h.ntotal and not (0 <= entry < h.ntotal and max_level == levels[entry] - 1):
        raise r.fail(f"HNSW entry point {entry} at level {max_level} is not a node of the graph")
    if not (1 <= ef_construction <= MAX_EF_SEARCH and 1 <= ef_search <= MAX_EF_SEARCH):
        raise r.fail(f"HNSW efConstruction {ef_construction} / efSearch {ef_search} outside 1..{MAX_EF_SEARCH}")
    _read_sub_index(r, h, ("IxFI",), h.ntotal, "HNSW storage")


def _read_ivf(r: _FaissReader, h: _IndexHeader) -> None:
    """IVF header, coarse quantizer, direct map, the fine codes of the type, then the inverted lists."""
    nlist, nprobe = r.scalar("Q", "IVF nlist"), r.scalar("Q", "IVF nprobe")
    if nlist < 1 or nprobe < 1:
        raise r.fail(f"IVF with {nlist} lists and nprobe {nprobe}")
    _read_sub_index(r, h, ("IxFI", "IHNf"), nlist, "IVF quantizer")
    map_type = r.scalar("B", "IVF direct map type")
    if map_type not in (0, 1, _DIRECT_MAP_HASHTABLE):
        raise r.fail(f"IVF direct map of unknown type {map_type}")
    r.skip_vector(8, "IVF direct map", expected=h.ntotal if map_type == 1 else 0)
    if map_type == _DIRECT_MAP_HASHTABLE:
        r.skip_vector(16, "IVF direct map table")
    if h.fourcc == "IwFl":
        code_size = 4 * h.d
    elif h.fourcc == "IwPQ":
        r.scalar("?", "IVF by_residual")
        code_size = r.scalar("Q", "IVF code size")
        if _read_pq(r, h.d) != code_size:
            raise r.fail(f"IVF-PQ code size {code_size} does not match its PQ")
    else:  # IwSq
        code_size = _read_sq(r, h.d)
        if r.scalar("Q", "IVF code size") != code_size:
            raise r.fail("IVF-SQ code size does not match its SQ")
        r.scalar("?", "IVF by_residual")
    _read_inverted_lists(r, h, nlist, code_size)


def _read_inverted_lists(r: _FaissReader, h: _IndexHeader, nlist: int, code_size: int) -> None:
    kind = r.bytes(4, "inverted lists type").decode("latin-1")
    if kind != "ilar":
        raise r.fail(f"inverted lists of type {kind!r}; this project writes them inside the file ('ilar')")
    if (r.scalar("Q", "list count"), r.scalar("Q", "list code size")) != (nlist, code_size):
        raise r.fail(f"inverted lists do not match the IVF's {nlist} lists of {code_size}-byte codes")
    layout = r.bytes(4, "list layout").decode("latin-1")
    if layout == "full":
        sizes = r.array("u8", "list sizes", expected=nlist).astype(object)
    elif layout == "sprs":
        pairs = r.array("u8", "list sizes")
        if pairs.size % 2 or (pairs.size and int(pairs[::2].max()) >= nlist):
            raise r.fail("sparse list sizes name lists that do not exist")
        sizes = pairs[1::2].astype(object)
    else:
        raise r.fail(f"unknown list layout {layout!r}")
    total = int(sum(sizes))  # Python ints: no overflow however large the declared sizes
    if total != h.ntotal:
        raise r.fail(f"inverted lists hold {total} vectors, the header says {h.ntotal}")
    r.skip(total * (code_size + 8), f"{total} codes and ids of the inverted lists")


def _read_sub_index(r: _FaissReader, parent: _IndexHeader, allowed: tuple[str, ...], ntotal: int, what: str) -> None:
    fourcc = r.bytes(4, what).decode("latin-1")
    if fourcc not in allowed:
        raise r.fail(f"{what} is of type {fourcc!r}, expected {' or '.join(allowed)}")
    h = _read_index_header(r, fourcc)
    if (h.d, h.ntotal) != (parent.d, ntotal) and not (r.untrained and h.d == parent.d and h.ntotal == 0):
        raise r.fail(f"{what} holds {h.ntotal} x {h.d}, expected {ntotal} x {parent.d}")
    _INDEX_READERS[fourcc](r, h)


# The index types build_faiss_index allows, by the four-character code faiss.write_index gives them.
_INDEX_READERS = {
    "IxFI": _read_flat,  # Flat
    "IxPq": _read_index_pq,  # PQm
    "IxSQ": _read_index_sq,  # SQ8, SQfp16, ...
    "IwFl": _read_ivf,  # IVFn,Flat
    "IwPQ": _read_ivf,  # IVFn,PQm
    "IwSq": _read_ivf,  # IVFn,SQ8
    "IHNf": _read_hnsw,  # HNSWm
}


def check_faiss_file(file: str | Path) -> tuple[str, int, int]:
    """Walk a FAISS index file as ``faiss.read_index`` would, reading only sizes; returns its
    ``(fourcc, d, ntotal)``.

    Raises :class:`IndexDirError` (one line naming the file) for an index type this project does not
    write, or when a declared size does not match the bytes that follow: FAISS itself would allocate
    the declared size first (a 109-byte file can ask for gigabytes).
    """
    file = Path(file)
    with open(file, "rb") as f:
        return walk_faiss(f, file.stat().st_size, file.name)


def walk_faiss(f: BinaryIO, size: int, name: str, untrained: bool = False) -> tuple[str, int, int]:
    r = _FaissReader(f, size, name, untrained)
    fourcc = r.bytes(4, "index type").decode("latin-1")
    if fourcc not in _INDEX_READERS:
        raise r.fail(f"unsupported FAISS index type {fourcc!r} (this project writes {', '.join(_INDEX_READERS)})")
    h = _read_index_header(r, fourcc)
    _INDEX_READERS[fourcc](r, h)
    if r.left():
        raise r.fail(f"{r.left()} unexpected bytes after the index")
    return h.fourcc, h.d, h.ntotal
