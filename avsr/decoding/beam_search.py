"""Joint CTC/attention beam search (Watanabe et al. 2017; ESPnet's ``BeamSearch`` semantics), batched over
utterances and beams.

Per output step i, for every live hypothesis g of every utterance:

1. the decoder gives log p_att(c | g, x) for every unit c (blank excluded);
2. pre-beam: the ``int(pre_beam_ratio * beam_size)`` best c by ``(1 - w) * att`` (ESPnet's "full" pre-beam
   key; with w = 1 there is no decoder and every unit is a candidate, as in ESPnet);
3. exact CTC prefix scores for those candidates only (:mod:`avsr.decoding.ctc_prefix`);
4. ``score(g + c) = score(g) + (1 - w) * att + w * (psi(g + c) - psi(g)) + length_bonus``;
5. the ``beam_size`` best extensions over all hypotheses of the utterance survive; those ending in eos
   leave the beam and join the ended list (the beam then holds fewer live hypotheses, as in ESPnet).

Stopping, as ESPnet with ``maxlenratio = 0``: the maximum output length is the utterance's encoder length
T; at step T - 1 every live hypothesis is ended as it is (eos appended without a score). End detection
(ESPnet ``end_detect``, Watanabe et al. Eq. 50): after step i, stop if for each m in 0, 1, 2 there are ended
hypotheses whose ``len(yseq)`` (sos + labels + eos) is i - m and the best of them is more than 10 nats
below the best ended hypothesis so far. ESPnet measures lengths with sos and eos included, so the rule
looks at the hypotheses that ended two to four steps ago; this implementation keeps that exactly.
An utterance also stops when no live hypothesis is left. Scores are not length-normalised.

Batching: B utterances x ``beam_size`` slots, a dead slot has score -inf. One step is a fixed number of
tensor operations for the whole batch, with no Python loop over hypotheses or frames.
Finished utterances leave the batch, and the CTC frames are trimmed to the longest remaining one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avsr.decoder import DecoderState, TransformerDecoder
from avsr.decoding.ctc_prefix import NEG_INF, CtcPrefixScorer
from avsr.decoding.hypothesis import END_DETECT_D, END_DETECT_M, Hypothesis


def _check(ctc_weight: float, decoder: TransformerDecoder | None, ctc_log_probs: Tensor | None) -> None:
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight={ctc_weight} must be in [0, 1]")
    if ctc_weight < 1.0 and decoder is None:
        raise ValueError("ctc_weight < 1 needs the attention decoder")
    if ctc_weight > 0.0 and ctc_log_probs is None:
        raise ValueError("ctc_weight > 0 needs CTC log-probabilities")


@torch.no_grad()
def joint_beam_search(
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
    """Decode B utterances at once: ``enc_out`` (B, T, D), ``enc_lengths`` (B,), ``ctc_log_probs`` (B, T, V).

    Returns, per utterance, up to ``nbest`` hypotheses, best first. ``decoder`` may be None when
    ``ctc_weight == 1`` (and ``ctc_log_probs`` None when it is 0).
    """
    _check(ctc_weight, decoder, ctc_log_probs)
    use_att, use_ctc = ctc_weight < 1.0, ctc_weight > 0.0
    device = enc_lengths.device
    b = enc_lengths.shape[0]
    v = ctc_log_probs.shape[-1] if ctc_log_probs is not None else decoder.head.out_features
    k = beam_size
    pre_beam = min(int(pre_beam_ratio * beam_size), v - 1)
    do_pre_beam = use_ctc and use_att and pre_beam < v - 1

    utts = torch.arange(b, device=device)  # original index of each active utterance
    maxlen = enc_lengths.clone()
    score = torch.full((b, k), NEG_INF, device=device)
    score[:, 0] = 0.0
    att_sum = torch.zeros(b, k, device=device)
    ctc_sum = torch.zeros(b, k, device=device)
    yseq = torch.full((b * k, 1), sos, dtype=torch.long, device=device)
    dec_state: DecoderState | None = decoder.init_state(enc_out, enc_lengths, beams=k) if use_att else None
    scorer = CtcPrefixScorer(ctc_log_probs, enc_lengths, eos, blank, beams=k) if use_ctc else None
    ctc_state = scorer.initial_state() if use_ctc else None
    all_units = torch.tensor([c for c in range(v) if c != blank], device=device)

    ended: list[list[Hypothesis]] = [[] for _ in range(b)]
    max_t = int(enc_lengths.max()) if b else 0
    best_ended = torch.full((b,), NEG_INF, device=device)
    best_ended_by_len = torch.full((b, max_t + 4), NEG_INF, device=device)  # by ESPnet's len(yseq)

    if (maxlen <= 0).any():  # an empty input has no hypotheses (ESPnet returns none either)
        keep = (maxlen > 0).nonzero().flatten()
        utts, maxlen, score = utts[keep], maxlen[keep], score[keep]
        att_sum, ctc_sum = att_sum[keep], ctc_sum[keep]
        yseq = yseq[: keep.numel() * k]
        if use_att:
            dec_state = dec_state.select_utterances(keep)
        if use_ctc and keep.numel():
            ctc_state = scorer.keep_utterances(ctc_state, keep, maxlen)

    for i in range(max_t):
        if utts.numel() == 0:
            break
        a = utts.numel()
        n = a * k
        # 1-2. attention scores and the pre-beam
        if use_att:
            att, dec_state = decoder.step(yseq[:, -1], dec_state)  # (N, V)
            att = att.float()
            weighted = (1.0 - ctc_weight) * att
        else:
            att = torch.zeros(n, v, device=device)
            weighted = att.clone()
        weighted[:, blank] = NEG_INF
        cand = weighted.topk(pre_beam, dim=1).indices if do_pre_beam else all_units.expand(n, -1)  # (N, P)
        p = cand.shape[1]
        cand_score = weighted.gather(1, cand) + length_bonus  # (N, P)
        # 3. exact CTC prefix scores of the candidates
        if use_ctc:
            delta, psi = scorer.score(ctc_state, cand, i)  # (N, P)
            cand_score = cand_score + ctc_weight * delta
        # 4-5. best beam_size extensions per utterance
        total = score.view(n, 1) + cand_score  # (N, P)
        top_score, top_idx = total.view(a, k * p).topk(k, dim=1)  # (A, K)
        rows = (torch.arange(a, device=device)[:, None] * k + top_idx // p).flatten()  # (N,)
        cols = (top_idx % p).flatten()
        tokens = cand[rows, cols]  # (N,)
        yseq = torch.cat([yseq.index_select(0, rows), tokens[:, None]], dim=1)  # (N, i + 2)
        att_sum = (att_sum.view(n)[rows] + att[rows, tokens]).view(a, k)
        if use_att:
            dec_state = dec_state.select(rows)
        if use_ctc:  # forward variables only for the survivors
            ctc_state = scorer.advance(ctc_state, rows, tokens, psi[rows, cols], i)
            ctc_sum = ctc_state.psi.view(a, k)
        score = top_score

        # ended hypotheses: chose eos, or cut at the maximum length
        alive = torch.isfinite(score)
        chose_eos = (tokens.view(a, k) == eos) & alive
        cut = (maxlen == i + 1)[:, None] & alive & ~chose_eos
        done_hyp = chose_eos | cut
        if done_hyp.any():
            yseq_len = torch.where(chose_eos, i + 2, i + 3)  # ESPnet's len(yseq): sos + labels + eos
            _collect(ended, utts, done_hyp, chose_eos, score, att_sum, ctc_sum, yseq, yseq_len, eos)
            flat_utt = utts[:, None].expand(a, k)[done_hyp]
            best_ended.scatter_reduce_(0, flat_utt, score[done_hyp], reduce="amax")
            lin = flat_utt * best_ended_by_len.shape[1] + yseq_len[done_hyp]
            best_ended_by_len.view(-1).scatter_reduce_(0, lin, score[done_hyp], reduce="amax")
            score = score.masked_fill(done_hyp, NEG_INF)

        finished = (maxlen == i + 1) | ~torch.isfinite(score).any(dim=1)  # (A,)
        if end_detect:
            finished |= _end_detected(best_ended[utts], best_ended_by_len[utts], i)
        if finished.any():
            keep = (~finished).nonzero().flatten()
            utts, maxlen = utts[keep], maxlen[keep]
            score, att_sum, ctc_sum = score[keep], att_sum[keep], ctc_sum[keep]
            rows = (keep[:, None] * k + torch.arange(k, device=device)).flatten()
            yseq = yseq.index_select(0, rows)
            if use_att:
                dec_state = dec_state.select_utterances(keep)
            if use_ctc and keep.numel():
                ctc_state = scorer.keep_utterances(ctc_state, keep, maxlen)

    return [sorted(h, key=lambda x: x.score, reverse=True)[:nbest] for h in ended]


def _end_detected(best: Tensor, best_by_len: Tensor, i: int) -> Tensor:
    """ESPnet's end_detect for each utterance: (A,) best ended score, (A, L) best ended score by len(yseq)."""
    count = torch.zeros_like(best, dtype=torch.long)
    for m in range(END_DETECT_M):
        length = i - m
        if length < 0:
            continue
        s = best_by_len[:, length]
        count += (torch.isfinite(s) & (s - best < END_DETECT_D)).long()
    return count == END_DETECT_M


def _collect(
    ended: list[list[Hypothesis]],
    utts: Tensor,
    done: Tensor,
    chose_eos: Tensor,
    score: Tensor,
    att_sum: Tensor,
    ctc_sum: Tensor,
    yseq: Tensor,
    yseq_len: Tensor,
    eos: int,
) -> None:
    """Bookkeeping only: copy the ended hypotheses (few per step) to Python lists."""
    a, k = done.shape
    idx = done.flatten().nonzero().flatten()
    seqs = yseq.index_select(0, idx).tolist()
    for j, seq in zip(idx.tolist(), seqs):
        toks = seq[1:]
        if toks and toks[-1] == eos and chose_eos.view(-1)[j]:
            toks = toks[:-1]
        u = int(utts[j // k])
        ended[u].append(
            Hypothesis(
                tokens=toks,
                score=float(score.view(-1)[j]),
                att_score=float(att_sum.view(-1)[j]),
                ctc_score=float(ctc_sum.view(-1)[j]),
                truncated=not bool(chose_eos.view(-1)[j]),
                yseq_len=int(yseq_len.view(-1)[j]),
            )
        )


def beam_search(
    model: torch.nn.Module,
    enc: dict[str, Tensor],
    beam_size: int = 10,
    ctc_weight: float = 0.1,
    length_bonus: float = 0.0,
    nbest: int = 1,
    pre_beam_ratio: float = 1.5,
    end_detect: bool = True,
) -> list[list[Hypothesis]]:
    """Joint search over the output of ``model.encode(...)`` (an :class:`avsr.model.AvsrModel`)."""
    return joint_beam_search(
        enc["enc_out"],
        enc["enc_lengths"],
        enc["ctc_log_probs"],
        model.decoder,
        model.sos,
        model.eos,
        beam_size=beam_size,
        ctc_weight=ctc_weight,
        length_bonus=length_bonus,
        nbest=nbest,
        pre_beam_ratio=pre_beam_ratio,
        end_detect=end_detect,
    )
