"""Exact CTC prefix scores (Watanabe et al. 2017, Algorithm 2), batched over utterances, hypotheses and
candidate labels, without a Python loop over hypotheses or frames.

For a hypothesis g (a label prefix) and a candidate label c, h = g + c. With x_t(k) the CTC log
posteriors, the forward variables of h, r_t^n(h) (h emitted, last frame non-blank) and r_t^b(h) (last
frame blank), follow

    phi_t(g, c)  = r_t^b(g)                      if c == last(g)   (a repeat needs a blank in between)
                 = logaddexp(r_t^n(g), r_t^b(g))  otherwise
    r_t^n(h)     = logaddexp(r_{t-1}^n(h), phi_{t-1}(g, c)) + x_t(c)
    r_t^b(h)     = logaddexp(r_{t-1}^n(h), r_{t-1}^b(h)) + x_t(blank)
    psi(h)       = logsumexp_t (phi_{t-1}(g, c) + x_t(c))           (phi_{-1} = 0 for the empty g)
    psi(g + eos) = logaddexp(r_{T-1}^n(g), r_{T-1}^b(g))             (the probability of exactly g)

psi(h) is the log probability of all label sequences that start with h; the beam search adds
psi(h) - psi(g) per step. Two observations make this cheap:

* psi(h) needs phi (from g's forward variables) but not h's own: :meth:`CtcPrefixScorer.score` computes
  it for all N hypotheses x K pre-beam candidates as one ``logsumexp`` over frames;
* the forward variables r(h) are only needed for the extensions that survive the beam (N, not N x K):
  :meth:`CtcPrefixScorer.advance` computes them after pruning, and solves the recursion over frames in
  closed form (cumulative sums and ``logcumsumexp``, see :func:`forward_variables`), so there is no loop
  over frames either.

Padding: frames past an utterance's length get x(blank) = 0 and x(other) = -inf, so r^b carries the
total over them unchanged and psi gains nothing; every utterance then reads its totals at the last
padded frame, and the batch gives each utterance exactly what it gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avsr.masks import make_pad_mask

NEG_INF = float("-inf")
LOG_FLOOR = -1e4  # log-posteriors are floored here inside the closed form; exp(-1e4) == 0 in float64


@dataclass
class CtcPrefixState:
    """Per hypothesis: forward variables ``r`` (T, 2, N) = [r^n, r^b] of its prefix, ``psi`` (N,) its log
    prefix probability, ``last`` (N,) its last label (-1 for the empty prefix)."""

    r: Tensor
    psi: Tensor
    last: Tensor


def forward_variables(phi_prev: Tensor, xc: Tensor, xb: Tensor) -> tuple[Tensor, Tensor]:
    """Solve the r^n / r^b recursion for all frames at once, in float64.

    Unrolled, r^n_t = logsumexp_{s <= t} (phi_{s-1} + x_s(c) + ... + x_t(c)), i.e.
    ``r^n_t = C_t + logcumsumexp_s(phi_{s-1} - C_{s-1})`` with C the cumulative sum of x(c); likewise
    ``r^b_t = B_t + logcumsumexp_s(r^n_{s-1} - B_{s-1})`` with B that of x(blank) and r^n_{-1} = -inf.
    Differences of cumulative sums are exact enough in float64 (their size stays below 1e4 * T); the
    floor keeps them finite. ``phi_prev``, ``xc``, ``xb``: (T', ...) with ``phi_prev[t] = phi_{t-1}``.
    """
    c = torch.cumsum(xc.double().clamp(min=LOG_FLOOR), 0)
    c_prev = torch.cat([torch.zeros_like(c[:1]), c[:-1]])
    rn = c + torch.logcumsumexp(phi_prev.double() - c_prev, 0)
    b = torch.cumsum(xb.double().clamp(min=LOG_FLOOR), 0)
    b_prev = torch.cat([torch.zeros_like(b[:1]), b[:-1]])
    rn_prev = torch.cat([torch.full_like(rn[:1], NEG_INF), rn[:-1]])
    rb = b + torch.logcumsumexp(rn_prev - b_prev, 0)
    return rn, rb


class CtcPrefixScorer:
    """CTC prefix scoring for a batch of B utterances with ``beams`` hypothesis slots each.

    ``state = initial_state()``; per step ``delta, psi = score(state, cand, step)`` for candidates
    (N, K), then ``state = advance(state, rows, tokens, psi_chosen, step)`` for the N survivors.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, eos: int, blank: int = 0, beams: int = 1) -> None:
        """``log_probs`` (B, T, V) CTC log posteriors, ``lengths`` (B,)."""
        x = log_probs.detach()
        if x.dtype in (torch.float16, torch.bfloat16):  # autocast outputs: score in float32
            x = x.float()
        x = x.transpose(0, 1).contiguous()  # (T, B, V)
        pad = make_pad_mask(lengths, x.shape[0]).t()  # (T, B)
        x = x.masked_fill(pad[:, :, None], NEG_INF)
        x[:, :, blank] = x[:, :, blank].masked_fill(pad, 0.0)
        self.x, self.eos, self.blank, self.beams = x, eos, blank, beams

    def _rows_utt(self, n: int) -> Tensor:
        return torch.arange(n, device=self.x.device) // self.beams  # utterance of each hypothesis row

    def _gather(self, utt: Tensor, labels: Tensor) -> Tensor:
        """x_t(label) for hypotheses of utterances ``utt`` (N,) and labels (N, K) -> (T, N, K)."""
        t_len, b, v = self.x.shape
        flat = (utt[:, None] * v + labels).flatten()  # into the (B * V) axis
        return self.x.view(t_len, b * v).index_select(1, flat).view(t_len, *labels.shape)

    @staticmethod
    def _phi(state: CtcPrefixState, labels: Tensor) -> Tensor:
        """phi_t(g, c) for every hypothesis g and label c in ``labels`` (N, K) -> (T, N, K)."""
        r_sum = torch.logaddexp(state.r[:, 0], state.r[:, 1])  # (T, N)
        repeat = labels == state.last[:, None]
        return torch.where(repeat[None], state.r[:, 1, :, None], r_sum[:, :, None])

    def initial_state(self) -> CtcPrefixState:
        """The empty prefix in every slot: r^n = -inf, r^b_t = sum_{u <= t} x_u(blank), psi = 0."""
        t, b, _ = self.x.shape
        n = b * self.beams
        r = self.x.new_full((t, 2, n), NEG_INF)
        r[:, 1] = torch.cumsum(self.x[:, :, self.blank], 0).repeat_interleave(self.beams, dim=1)
        return CtcPrefixState(r, self.x.new_zeros(n), torch.full((n,), -1, dtype=torch.long, device=self.x.device))

    def score(self, state: CtcPrefixState, cand: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Candidates ``cand`` (N, K) after prefixes of ``step`` labels -> (psi(h) - psi(g), psi(h)), both (N, K)."""
        t_len = self.x.shape[0]
        n = cand.shape[0]
        t0 = min(step, t_len)  # h has step + 1 labels, so it ends at frame step or later
        xs = self._gather(self._rows_utt(n), cand)[t0:]  # (T', N, K)
        phi = self._phi(state, cand)  # (T, N, K)
        first = phi.new_full((1, *cand.shape), 0.0 if step == 0 else NEG_INF)
        phi_prev = torch.cat([first, phi[:-1]])[t0:]  # phi_{t-1} at frame t
        psi = torch.logsumexp(phi_prev.double() + xs.double(), 0).to(self.x.dtype)  # (N, K)
        r_end = torch.logaddexp(state.r[-1, 0], state.r[-1, 1])  # (N,): P(exactly g)
        psi = torch.where(cand == self.eos, r_end[:, None], psi)
        psi = psi.masked_fill(cand == self.blank, NEG_INF)
        prev = state.psi[:, None]
        delta = torch.where(torch.isneginf(prev), NEG_INF, psi - prev)  # dead slots stay dead, no NaN
        return delta, psi

    def advance(self, state: CtcPrefixState, rows: Tensor, tokens: Tensor, psi: Tensor, step: int) -> CtcPrefixState:
        """Forward variables of the surviving extensions: prefix ``rows`` (N,) + label ``tokens`` (N,), whose
        prefix scores ``psi`` (N,) came from :meth:`score`."""
        t_len = self.x.shape[0]
        g = CtcPrefixState(state.r.index_select(2, rows), state.psi[rows], state.last[rows])
        n = rows.shape[0]
        t0 = min(step, t_len)
        phi = self._phi(g, tokens[:, None])[:, :, 0]  # (T, N)
        first = phi.new_full((1, n), 0.0 if step == 0 else NEG_INF)
        phi_prev = torch.cat([first, phi[:-1]])[t0:]
        utt = self._rows_utt(n)
        xc = self._gather(utt, tokens[:, None])[t0:, :, 0]  # (T', N)
        xb = self.x[t0:, :, self.blank].index_select(1, utt)  # (T', N)
        r = self.x.new_full((t_len, 2, n), NEG_INF)
        if t0 < t_len:
            rn, rb = forward_variables(phi_prev, xc, xb)
            r[t0:, 0], r[t0:, 1] = rn.to(r.dtype), rb.to(r.dtype)
        return CtcPrefixState(r, psi, tokens)

    def keep_utterances(self, state: CtcPrefixState, utts: Tensor, lengths: Tensor) -> CtcPrefixState:
        """Drop finished utterances (keep ``utts``) and trim frames past the longest remaining ``lengths``."""
        t_new = int(lengths.max())
        rows = (utts[:, None] * self.beams + torch.arange(self.beams, device=utts.device)).flatten()
        # frames >= every remaining length are padding: the totals sit at t_new - 1 already
        self.x = self.x[:t_new].index_select(1, utts)
        return CtcPrefixState(state.r[:t_new].index_select(2, rows), state.psi[rows], state.last[rows])
