"""CTC prefix scores and the CTC-only search against brute force over every alignment (float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from avsr.decoding import CtcPrefixScorer, beam_search_reference, joint_beam_search
from avsr.decoding.ctc_prefix import forward_variables

BLANK, EOS = 0, 3  # V = 4: blank, labels 1 and 2, eos (the CTC head scores eos like any unit)
V = 4


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out, prev = [], None
    for s in path:
        if s != prev and s != BLANK:
            out.append(s)
        prev = s
    return tuple(out)


def sequence_probs(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """P(l | x) for every label sequence l: the sum over all V^T alignments that collapse to it."""
    t = log_probs.shape[0]
    lp = log_probs.double().tolist()
    probs: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=t):
        p = math.exp(sum(lp[i][s] for i, s in enumerate(path)))
        key = collapse(path)
        probs[key] = probs.get(key, 0.0) + p
    return probs


def prefix_prob(probs: dict, prefix: tuple[int, ...]) -> float:
    return sum(p for seq, p in probs.items() if seq[: len(prefix)] == prefix)


def random_log_probs(b: int, t: int, seed: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, t, V, generator=g, dtype=torch.float64)).log_softmax(-1)


def run_prefixes(scorer: CtcPrefixScorer, prefixes: list[tuple[int, ...]]):
    """Advance each hypothesis slot through its own prefix; return the final scores of candidates 1, 2, eos."""
    n = len(prefixes)
    cand = torch.tensor([[1, 2, EOS]] * n)
    state = scorer.initial_state()
    steps = max(len(p) for p in prefixes)
    assert all(len(p) == steps for p in prefixes)
    for i in range(steps):
        _, psi = scorer.score(state, cand, i)
        tokens = torch.tensor([p[i] for p in prefixes])
        state = scorer.advance(state, torch.arange(n), tokens, psi[torch.arange(n), tokens - 1], i)
    delta, psi = scorer.score(state, cand, steps)
    return state, delta, psi


PREFIXES = [(), (1,), (2,), (1, 1), (1, 2), (2, 2, 1), (1, 1, 1), (2, 1, 2)]


@pytest.mark.parametrize("prefix", PREFIXES, ids=lambda p: "-".join(map(str, p)) or "empty")
@pytest.mark.parametrize("t", [1, 3, 6])
def test_prefix_scores_equal_brute_force(prefix, t):
    lp = random_log_probs(1, t, seed=t * 7 + len(prefix))
    probs = sequence_probs(lp[0])
    scorer = CtcPrefixScorer(lp, torch.tensor([t]), eos=EOS, blank=BLANK)
    state, delta, psi = run_prefixes(scorer, [prefix])
    want_g = prefix_prob(probs, prefix)
    for j, c in enumerate([1, 2]):
        want = prefix_prob(probs, prefix + (c,))
        got = psi[0, j].exp().item()
        assert got == pytest.approx(want, rel=1e-9, abs=1e-300), (prefix, c)
        if want_g > 0 and want > 0:
            assert delta[0, j].item() == pytest.approx(math.log(want) - math.log(want_g), rel=1e-9)
    # end of sentence: the probability of exactly the prefix
    assert psi[0, 2].exp().item() == pytest.approx(probs.get(prefix, 0.0), rel=1e-9, abs=1e-300)


def test_closed_form_forward_variables_equal_the_frame_recursion():
    g = torch.Generator().manual_seed(5)
    t, n = 40, 6
    phi_prev = torch.randn(t, n, generator=g, dtype=torch.float64) * 3 - 20
    phi_prev[:7] = float("-inf")  # a prefix that cannot end before frame 7
    xc = torch.randn(t, n, generator=g, dtype=torch.float64).clamp(max=0) * 4
    xb = torch.randn(t, n, generator=g, dtype=torch.float64).clamp(max=0)
    rn_want = torch.full((t, n), float("-inf"), dtype=torch.float64)
    rb_want = rn_want.clone()
    rn_want[0] = phi_prev[0] + xc[0]
    for s in range(1, t):
        rn_want[s] = torch.logaddexp(rn_want[s - 1], phi_prev[s]) + xc[s]
        rb_want[s] = torch.logaddexp(rn_want[s - 1], rb_want[s - 1]) + xb[s]
    rn, rb = forward_variables(phi_prev, xc, xb)
    torch.testing.assert_close(rn, rn_want, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(rb, rb_want, rtol=1e-12, atol=1e-9)


def test_full_sequence_probability_matches_torch_ctc_loss():
    lp = random_log_probs(1, 6, seed=3)
    scorer = CtcPrefixScorer(lp, torch.tensor([6]), eos=EOS, blank=BLANK)
    for seq in [(1,), (1, 1), (2, 1, 2), (1, 1, 2, 2)]:
        _, _, psi = run_prefixes(scorer, [seq])
        ref = -F.ctc_loss(
            lp.transpose(0, 1),
            torch.tensor([seq]),
            torch.tensor([6]),
            torch.tensor([len(seq)]),
            blank=BLANK,
            reduction="sum",
        )
        assert psi[0, 2].item() == pytest.approx(ref.item(), rel=1e-9)


def test_batched_padded_scores_equal_each_utterance_alone():
    """Three utterances of 6, 4 and 2 frames, padded with garbage, two hypothesis slots each."""
    lengths = [6, 4, 2]
    lp = random_log_probs(3, 6, seed=11)
    lp[1, 4:] = 5.0  # garbage past the lengths must not matter
    lp[2, 2:] = -7.0
    prefixes = [(1, 2), (2, 2), (1, 1), (2, 1), (2, 2), (1, 2)]  # slot 2u, 2u+1 belong to utterance u
    scorer = CtcPrefixScorer(lp, torch.tensor(lengths), eos=EOS, blank=BLANK, beams=2)
    _, _, psi = run_prefixes(scorer, prefixes)
    for n, prefix in enumerate(prefixes):
        u = n // 2
        probs = sequence_probs(lp[u, : lengths[u]])
        for j, c in enumerate([1, 2]):
            want = prefix_prob(probs, prefix + (c,))
            assert psi[n, j].exp().item() == pytest.approx(want, rel=1e-9, abs=1e-300)
        assert psi[n, 2].exp().item() == pytest.approx(probs.get(prefix, 0.0), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("seed", range(6))
def test_ctc_only_search_finds_the_brute_force_best_sequence(seed):
    t = 3 + seed % 4
    lp = random_log_probs(1, t, seed=100 + seed, scale=2.0)
    probs = sequence_probs(lp[0])
    ranked = sorted(((p, s) for s, p in probs.items() if EOS not in s), reverse=True)
    for search in (joint_beam_search, beam_search_reference):
        hyps = search(
            None, torch.tensor([t]), lp.float(), None, sos=EOS, eos=EOS, beam_size=200, ctc_weight=1.0, nbest=3
        )
        hyps = hyps[0]
        assert tuple(hyps[0].tokens) == ranked[0][1]
        assert hyps[0].score == pytest.approx(math.log(ranked[0][0]), rel=1e-4)
        # the search is exhaustive at this beam, so the whole n-best list is the brute-force ranking
        assert len(hyps) == 3
        for h, (p, s) in zip(hyps, ranked):
            assert tuple(h.tokens) == s
            assert h.ctc_score == pytest.approx(math.log(p), rel=1e-4)
