"""A decoded hypothesis and the end-detection rule shared by the batched and the reference searches."""

from __future__ import annotations

from dataclasses import dataclass, field

END_DETECT_M = 3  # ESPnet's end_detect: the last M ended lengths ...
END_DETECT_D = -10.0  # ... all more than 10 nats below the best ended hypothesis


@dataclass
class Hypothesis:
    """A finished hypothesis: unit ids without sos/eos and its scores.

    ``score = (1 - w) * att_score + w * ctc_score + length_bonus * steps``. A hypothesis that chose eos has
    ``steps = len(tokens) + 1``, ``att_score`` the decoder's log-probability of tokens + eos and
    ``ctc_score`` the CTC log-probability of exactly ``tokens``. One ``truncated`` at the maximum length
    (the encoder length) got eos without a score: ``steps = len(tokens)``, ``att_score`` covers the tokens
    only and ``ctc_score`` is their CTC prefix score.
    """

    tokens: list[int]
    score: float
    att_score: float = 0.0
    ctc_score: float = 0.0
    truncated: bool = False
    yseq_len: int = field(default=0, repr=False)  # ESPnet's len(yseq): sos + tokens + eos(s)
