"""eval.wer: LRS2 normalisation and corpus-level rates, checked against a hand-written edit distance."""

from __future__ import annotations

import pytest

from eval.wer import error_rates, normalize_transcript, utterance_errors


def edit_distance(a: list, b: list) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


def test_normalisation_keeps_apostrophes_and_upper_cases():
    assert normalize_transcript("  don't, stop -- it's 1960s!  ") == "DON'T STOP IT'S 1960S"


def test_corpus_rates_equal_summed_edit_distances():
    refs = ["THE CAT'S HAT", "A QUICK BROWN FOX", "HELLO"]
    hyps = ["the cats hat", "a brown fox jumps", ""]
    rates = error_rates(refs, hyps)
    nr = [normalize_transcript(r) for r in refs]
    nh = [normalize_transcript(h) for h in hyps]
    words = sum(edit_distance(r.split(), h.split()) for r, h in zip(nr, nh))
    chars = sum(edit_distance(list(r), list(h)) for r, h in zip(nr, nh))
    assert rates["word_errors"] == words and rates["ref_words"] == 8
    assert rates["wer"] == pytest.approx(100 * words / 8)
    assert rates["char_errors"] == chars
    assert rates["cer"] == pytest.approx(100 * chars / sum(len(r) for r in nr))
    assert utterance_errors("THE CAT'S HAT", "the cats hat") == {
        "word_errors": 1,
        "ref_words": 3,
        "char_errors": 1,
        "ref_chars": 13,
    }
    with pytest.raises(ValueError):
        error_rates(["A"], [])
