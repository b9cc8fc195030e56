"""Word and character error rates through jiwer, on LRS2's transcript convention.

Normalisation (both sides): upper case; apostrophes, letters and digits kept (LRS2 writes "DON'T",
"1960S"); every other character becomes a space; runs of spaces collapse. Rates are corpus level, as
the literature reports them: total edit operations over total reference words (characters, spaces
between words included, for CER), in percent.

    from eval.wer import error_rates
    error_rates(["THE CAT'S HAT"], ["the cats hat"])   # {"wer": 33.33, "cer": 7.69, ...}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jiwer

_DROP = re.compile(r"[^\w']|_", flags=re.UNICODE)


def normalize_transcript(text: str) -> str:
    """Upper case, apostrophes/letters/digits kept, everything else a space, spaces collapsed."""
    return " ".join(_DROP.sub(" ", text.upper()).split())


def utterance_errors(reference: str, hypothesis: str) -> dict[str, int]:
    """Edit counts of one normalised pair: word/char errors and reference word/char counts."""
    return _counts([normalize_transcript(reference)], [normalize_transcript(hypothesis)])


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, Any]:
    """Corpus WER and CER in percent, with the counts they come from."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    c = _counts(refs, hyps)
    return {
        "wer": 100.0 * c["word_errors"] / max(c["ref_words"], 1),
        "cer": 100.0 * c["char_errors"] / max(c["ref_chars"], 1),
        "utterances": len(refs),
        **c,
    }


def _counts(refs: list[str], hyps: list[str]) -> dict[str, int]:
    if not refs:
        return {"word_errors": 0, "ref_words": 0, "char_errors": 0, "ref_chars": 0}
    w = jiwer.process_words(refs, hyps)
    ch = jiwer.process_characters(refs, hyps)
    return {
        "word_errors": w.substitutions + w.deletions + w.insertions,
        "ref_words": w.substitutions + w.deletions + w.hits,
        "char_errors": ch.substitutions + ch.deletions + ch.insertions,
        "ref_chars": ch.substitutions + ch.deletions + ch.hits,
    }
