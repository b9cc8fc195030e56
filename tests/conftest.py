"""Fixtures shared by more than one test folder."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(scope="session")
def single_threaded_faiss():
    """Tiny indexes gain nothing from threads, and on a shared machine OpenMP barriers between two busy
    threads cost up to 20x (seen: 6 s instead of 0.3 s to train a small IVF-PQ). Used by the eval/ and
    bench/ tests; faiss and torch may share one OpenMP runtime, so torch runs on one thread after it too."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
