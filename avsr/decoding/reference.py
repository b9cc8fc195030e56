"""Unbatched, per-hypothesis joint CTC/attention beam search: the reference for tests and benchmarks.

The same algorithm as :func:`avsr.decoding.beam_search.joint_beam_search`, written the way ESPnet's
``BeamSearch`` runs it: one utterance at a time, a Python list of hypotheses, each scored on its own
(the decoder with batch size 1 and its own cache, CTC prefix scores with a loop over frames vectorised
only over that hypothesis' candidates, as ESPnet's ``CTCPrefixScore``), on the utterance's own frames
without padding. Slow by design; it shares no scoring code with the batched search, so agreement
between the two is evidence for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from avsr.decoder import TransformerDecoder
from avsr.decoding.hypothesis import END_DETECT_D, END_DETECT_M, Hypothesis

NEG_INF = float("-inf")


class _SingleCtcPrefix:
    """CTC prefix scores of one hypothesis' candidates, over one utterance's real frames (T, V)."""

    def __init__(self, x: Tensor, eos: int, blank: int) -> None:
        self.x, self.eos, self.blank = x, eos, blank

    def initial_state(self) -> Tensor:
        r = torch.full((self.x.shape[0], 2), NEG_INF)
        r[:, 1] = torch.cumsum(self.x[:, self.blank], 0)
        return r  # (T, 2)

    def __call__(self, n_labels: int, last: int, cs: Tensor, r_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix of ``n_labels`` labels ending in ``last`` (-1: empty), candidates ``cs`` (K,) -> psi (K,), r."""
        t_len = self.x.shape[0]
        xs = self.x[:, cs]  # (T, K)
        r = torch.full((t_len, 2, cs.numel()), NEG_INF)
        if n_labels == 0:
            r[0, 0] = xs[0]
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # (T,)
        phi = r_sum[:, None].repeat(1, cs.numel())
        phi[:, cs == last] = r_prev[:, 1:2]
        start = max(n_labels, 1)
        psi = r[start - 1, 0].clone()
        for t in range(start, t_len):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], phi[t - 1]) + xs[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + self.x[t, self.blank]
            psi = torch.logaddexp(psi, phi[t - 1] + xs[t])
        psi[cs == self.eos] = r_sum[-1]
        psi[cs == self.blank] = NEG_INF
        return psi, r


@dataclass
class _Hyp:
    yseq: list[int]
    score: float
    att: float
    ctc: float
    ctc_r: Tensor | None
    dec: Any
    truncated: bool = False


# joint_beam_search's signature on purpose (tests pass both the same arguments); the body shares no code with it.
@torch.no_grad()
def beam_search_reference(
    enc_out: Tensor | None,
    enc_lengths: Tensor,
    ctc_log_probs: Tensor | None,
    decoder: TransformerDecoder | None,
    sos: int,
    eos: int,
    beam_size: int = 10,
    ctc_weight: float = 0.1,
    length_bonus: float = 0.0,
    nbest: int = 1,
    pre_beam_ratio: float = 1.5,
    end_detect: bool = True,
    blank: int = 0,
) -> list[list[Hypothesis]]:
    """Same arguments and result as ``joint_beam_search``; utterances are decoded one after another."""
    results = []
    for u in range(enc_lengths.shape[0]):
        t_len = int(enc_lengths[u])
        mem = enc_out[u : u + 1, :t_len] if enc_out is not None else None
        x = ctc_log_probs[u, :t_len].float() if ctc_log_probs is not None else None
        results.append(
            _search_one(
                mem,
                x,
                decoder,
                sos,
                eos,
                beam_size,
                ctc_weight,
                length_bonus,
                nbest,
                pre_beam_ratio,
                end_detect,
                blank,
                t_len,
            )
        )
    return results


def _search_one(
    mem: Tensor | None,
    x: Tensor | None,
    decoder: TransformerDecoder | None,
    sos: int,
    eos: int,
    beam_size: int,
    w: float,
    length_bonus: float,
    nbest: int,
    pre_beam_ratio: float,
    end_detect: bool,
    blank: int,
    maxlen: int,
) -> list[Hypothesis]:
    use_att, use_ctc = w < 1.0, w > 0.0
    v = x.shape[-1] if x is not None else decoder.head.out_features
    pre_beam = int(pre_beam_ratio * beam_size)
    do_pre_beam = use_att and use_ctc and pre_beam < v - 1
    ctc = _SingleCtcPrefix(x, eos, blank) if use_ctc else None
    dec0 = decoder.init_state(mem, torch.tensor([mem.shape[1]])) if use_att else None
    running = [_Hyp([sos], 0.0, 0.0, 0.0, ctc.initial_state() if use_ctc else None, dec0)]
    ended: list[_Hyp] = []
    for i in range(maxlen):
        best: list[tuple[float, int, _Hyp]] = []
        for hyp in running:
            if use_att:
                att, dec = decoder.step(torch.tensor([hyp.yseq[-1]]), hyp.dec)
                att = att[0]
            else:
                att, dec = torch.zeros(v), None
            weighted = (1.0 - w) * att
            weighted[blank] = NEG_INF
            if do_pre_beam:
                ids = torch.topk(weighted, pre_beam).indices
            else:
                ids = torch.tensor([c for c in range(v) if c != blank])
            cand = weighted[ids] + length_bonus + hyp.score
            if use_ctc:
                last = hyp.yseq[-1] if len(hyp.yseq) > 1 else -1
                psi, r = ctc(len(hyp.yseq) - 1, last, ids, hyp.ctc_r)
                delta = psi - hyp.ctc if hyp.ctc > NEG_INF else torch.full_like(psi, NEG_INF)
                cand = cand + w * delta
            top = torch.topk(cand, min(beam_size, ids.numel())).indices
            for j in top.tolist():
                c = int(ids[j])
                new = _Hyp(
                    yseq=hyp.yseq + [c],
                    score=float(cand[j]),
                    att=hyp.att + float(att[c]),
                    ctc=float(psi[j]) if use_ctc else 0.0,
                    ctc_r=r[:, :, j] if use_ctc else None,
                    dec=dec,
                )
                best.append((new.score, len(best), new))
            best = sorted(best, key=lambda e: e[0], reverse=True)[:beam_size]
        running = []
        for score, _, hyp in best:
            if score == NEG_INF:
                continue  # an impossible extension is never kept (as the batched search's dead slots)
            if hyp.yseq[-1] == eos:
                ended.append(hyp)
            elif i == maxlen - 1:
                hyp.yseq = hyp.yseq + [eos]
                hyp.truncated = True
                ended.append(hyp)
            else:
                running.append(hyp)
        if end_detect and _end_detect(ended, i):
            break
        if not running:
            break
    out = [
        Hypothesis(
            tokens=h.yseq[1:-1],
            score=h.score,
            att_score=h.att,
            ctc_score=h.ctc,
            truncated=h.truncated,
            yseq_len=len(h.yseq),
        )
        for h in ended
    ]
    return sorted(out, key=lambda h: h.score, reverse=True)[:nbest]


def _end_detect(ended: list[_Hyp], i: int) -> bool:
    """ESPnet's end_detect, on lists."""
    if not ended:
        return False
    best = max(h.score for h in ended)
    count = 0
    for m in range(END_DETECT_M):
        same = [h.score for h in ended if len(h.yseq) == i - m]
        if same and max(same) - best < END_DETECT_D:
            count += 1
    return count == END_DETECT_M
