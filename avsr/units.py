"""Output units (``TokenSet``): what the ids of an AVSR model mean.

Layout, as in ESPnet's hybrid CTC/attention recipes::

    0                 CTC blank (never a target; the decoder learns never to emit it)
    1 .. N            units: characters, or SentencePiece pieces in the tokenizer's own id order
    N + 1             sos/eos: one id, the decoder's start symbol and its end symbol

``vocab_size = N + 2`` is the output size of the CTC head and of the decoder. A SentencePiece tokenizer
of this project (``data.tokenizer.Tokenizer``: pad 0, unk 1, no bos/eos) maps onto this layout without
renumbering: its pad id 0 becomes the blank and ``from_sentencepiece(pieces)`` keeps ids 1..V-1, so
``tokenizer.encode(text)`` already gives target ids. Character sets encode and decode here directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

SPACE_PIECE = "\u2581"  # SentencePiece's word-boundary mark
BLANK = 0
LRS2_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789' "


@dataclass(frozen=True)
class TokenSet:
    """Units of a model: ``units[k]`` is the label of id ``k + 1``; blank is 0; sos/eos is the last id."""

    units: tuple[str, ...]
    kind: str = "char"  # "char" (one unit per character) or "sentencepiece" (pieces, "▁" starts a word)

    def __post_init__(self) -> None:
        if self.kind not in ("char", "sentencepiece"):
            raise ValueError(f"TokenSet kind must be 'char' or 'sentencepiece', got {self.kind!r}")
        if len(set(self.units)) != len(self.units):
            raise ValueError("TokenSet units must be unique")
        if self.kind == "char" and any(len(u) != 1 for u in self.units):
            raise ValueError("character units must be single characters")

    @classmethod
    def characters(cls, alphabet: str = LRS2_CHARACTERS) -> TokenSet:
        """Character units (default: LRS2's upper-case letters, digits, apostrophe and space)."""
        return cls(units=tuple(dict.fromkeys(alphabet)), kind="char")

    @classmethod
    def from_sentencepiece(cls, pieces: Sequence[str]) -> TokenSet:
        """Units from a SentencePiece vocabulary in id order (``pieces[0]`` is the pad id, which becomes blank)."""
        return cls(units=tuple(pieces[1:]), kind="sentencepiece")

    @property
    def blank(self) -> int:
        return BLANK

    @property
    def vocab_size(self) -> int:
        return len(self.units) + 2

    @property
    def sos(self) -> int:
        return len(self.units) + 1

    @property
    def eos(self) -> int:
        return len(self.units) + 1

    def encode(self, text: str) -> list[int]:
        """Target ids of ``text`` for a character set (SentencePiece sets encode with their tokenizer)."""
        if self.kind != "char":
            raise ValueError("encode() is for character sets; encode SentencePiece text with its tokenizer")
        index = {u: i + 1 for i, u in enumerate(self.units)}
        ids = []
        for pos, ch in enumerate(text):
            if ch not in index:
                raise ValueError(f"character {ch!r} at position {pos} of {text!r} is not a unit")
            ids.append(index[ch])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blank and sos/eos are skipped, so raw CTC or decoder output may be passed."""
        pieces = [self.units[i - 1] for i in (int(i) for i in ids) if 0 < i <= len(self.units)]
        text = "".join(pieces)
        if self.kind == "sentencepiece":
            text = text.replace(SPACE_PIECE, " ")
        return " ".join(text.split())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for an export's ``extra``."""
        return {"kind": self.kind, "units": list(self.units)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenSet:
        return cls(units=tuple(d["units"]), kind=d["kind"])


def pad_targets(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Target ids (B, L) zero-padded and their lengths (B,)."""
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.int64)
    targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.int64)
    for i, x in enumerate(ids):
        targets[i, : len(x)] = torch.tensor(x, dtype=torch.int64)
    return targets, lengths
