"""Token sets: the id layout (blank 0, units, sos/eos last) and text round trips."""

from __future__ import annotations

import pytest

from avsr import TokenSet


def test_character_layout_and_round_trip():
    ts = TokenSet.characters()
    assert ts.blank == 0 and ts.units[0] == "A" and ts.vocab_size == len(ts.units) + 2 == 40
    assert ts.sos == ts.eos == 39
    text = "DON'T STOP 1960S"
    ids = ts.encode(text)
    assert 0 not in ids and ts.eos not in ids and ts.decode(ids) == text
    assert ts.decode([0, *ids, ts.eos, 0]) == text  # blank and eos are skipped
    with pytest.raises(ValueError, match="'!'"):
        ts.encode("HI!")


def test_sentencepiece_ids_are_the_tokenizer_ids():
    pieces = ["<pad>", "<unk>", "\u2581THE", "\u2581CAT", "'S", "\u2581HAT"]
    ts = TokenSet.from_sentencepiece(pieces)
    assert ts.vocab_size == len(pieces) + 1 and ts.eos == len(pieces)
    assert ts.decode([2, 3, 4, 5]) == "THE CAT'S HAT"
    assert TokenSet.from_dict(ts.to_dict()) == ts
    with pytest.raises(ValueError):
        ts.encode("THE")
