"""Greedy CTC decoding: best unit per frame, repeats merged, blanks dropped (Graves et al. 2006)."""

from __future__ import annotations

import torch
from torch import Tensor

from avsr.masks import make_valid_mask


@torch.no_grad()
def greedy_ctc(ctc_log_probs: Tensor, lengths: Tensor, blank: int = 0, eos: int | None = None) -> list[list[int]]:
    """(B, T, V) log posteriors and (B,) lengths -> the collapsed best path of each utterance.

    ``eos`` (the sos/eos id, which the CTC head also scores) is dropped like the blank when given.
    """
    best = ctc_log_probs.argmax(-1)  # (B, T)
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    keep = (best != prev) & (best != blank) & make_valid_mask(lengths, best.shape[1])
    if eos is not None:
        keep &= best != eos
    return [row[k].tolist() for row, k in zip(best, keep)]
