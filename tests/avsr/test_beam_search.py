"""Joint CTC/attention search: batched == one utterance at a time == the per-hypothesis reference."""

from __future__ import annotations

import sys

import pytest
import torch

import avsr
from avsr.decoding import beam_search, beam_search_reference, greedy_ctc, joint_beam_search

FRAMES = [13, 9, 5]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = avsr.create_model("avsr_test", vocab_size=12).eval()
    with torch.no_grad():  # sharp CTC posteriors that prefer blank, as a trained model's: hypotheses end by
        m.ctc_head.weight.mul_(6.0)  # choosing eos at various lengths, not only at the maximum length
        m.ctc_head.bias[0] += 4.0
    return m


@pytest.fixture(scope="module")
def enc(model, inputs_fn):
    with torch.no_grad():
        return model.encode(**inputs_fn(FRAMES, seed=1))


def _single(enc: dict, u: int) -> dict:
    t = int(enc["enc_lengths"][u])
    return {
        "enc_out": enc["enc_out"][u : u + 1, :t],
        "enc_lengths": enc["enc_lengths"][u : u + 1],
        "ctc_log_probs": enc["ctc_log_probs"][u : u + 1, :t],
    }


def _search(fn, model, enc, **kw):
    return fn(enc["enc_out"], enc["enc_lengths"], enc["ctc_log_probs"], model.decoder, model.sos, model.eos, **kw)


def assert_same_nbest(a, b, tol=1e-4):
    assert len(a) == len(b)
    for ha, hb in zip(a, b):
        assert ha.tokens == hb.tokens
        assert ha.score == pytest.approx(hb.score, abs=tol)
        assert ha.ctc_score == pytest.approx(hb.ctc_score, abs=tol)
        assert ha.att_score == pytest.approx(hb.att_score, abs=tol)


@pytest.mark.parametrize(
    "kw",
    [
        {"ctc_weight": 0.3, "beam_size": 4, "length_bonus": 1.5},
        {"ctc_weight": 0.1, "beam_size": 10, "length_bonus": 2.0},
        {"ctc_weight": 0.0, "beam_size": 3},
        {"ctc_weight": 1.0, "beam_size": 5},
        {"ctc_weight": 0.5, "beam_size": 4, "length_bonus": 1.0, "end_detect": False},
    ],
    ids=["w0.3", "w0.1-bonus", "att-only", "ctc-only", "no-end-detect"],
)
def test_batched_equals_single_and_reference(model, enc, kw):
    batched = _search(joint_beam_search, model, enc, nbest=3, **kw)
    assert all(len(h) >= 1 for h in batched)
    if kw["ctc_weight"] > 0:
        assert any(len(h[0].tokens) > 1 for h in batched)  # not a trivial empty answer
    for u in range(len(FRAMES)):
        alone = _search(joint_beam_search, model, _single(enc, u), nbest=3, **kw)[0]
        assert_same_nbest(batched[u], alone)
    reference = _search(beam_search_reference, model, enc, nbest=3, **kw)
    for u in range(len(FRAMES)):
        assert_same_nbest(batched[u], reference[u])


def test_scores_decompose(model, enc):
    """total = (1 - w) * att + w * ctc + bonus * steps, with att the teacher-forced decoder log-probability and
    ctc the CTC log-probability of the tokens (torch's ctc_loss); truncated hypotheses carry no eos terms."""
    w, bonus = 0.3, 1.5
    hyps = _search(joint_beam_search, model, enc, ctc_weight=w, beam_size=4, length_bonus=bonus, nbest=3)
    kinds = set()
    for u, nbest in enumerate(hyps):
        t = int(enc["enc_lengths"][u])
        for h in nbest:
            kinds.add(h.truncated)
            n = len(h.tokens)
            tgt = torch.tensor([h.tokens])
            ys_in, ys_out = model.decoder_io(tgt, torch.tensor([n]))
            with torch.no_grad():
                logits = model.decoder(ys_in, enc["enc_out"][u : u + 1, :t], torch.tensor([t]))
            per_token = logits.log_softmax(-1).gather(2, ys_out[:, :, None])[0, :, 0]  # tokens then eos
            att = per_token[:n].sum() if h.truncated else per_token.sum()
            assert h.att_score == pytest.approx(att.item(), abs=1e-3)
            if not h.truncated:
                ctc = -torch.nn.functional.ctc_loss(
                    enc["ctc_log_probs"][u : u + 1, :t].transpose(0, 1),
                    tgt,
                    torch.tensor([t]),
                    torch.tensor([n]),
                    reduction="sum",
                )
                assert h.ctc_score == pytest.approx(ctc.item(), abs=1e-3)
            steps = n if h.truncated else n + 1
            want = (1 - w) * h.att_score + w * h.ctc_score + bonus * steps
            assert h.score == pytest.approx(want, abs=1e-3)
    assert kinds == {True, False}  # both kinds were checked


def test_model_wrapper_and_nbest_order(model, enc):
    hyps = beam_search(model, enc, beam_size=5, ctc_weight=0.1, nbest=4)
    for nbest in hyps:
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        assert all(model.eos not in h.tokens and 0 not in h.tokens for h in nbest)


def test_greedy_ctc_collapses_repeats_and_blanks():
    lp = torch.full((2, 7, 5), -10.0)
    path = [[1, 1, 0, 1, 2, 2, 0], [3, 0, 3, 3, 4, 4, 2]]
    for b, p in enumerate(path):
        for t, s in enumerate(p):
            lp[b, t, s] = 0.0
    assert greedy_ctc(lp, torch.tensor([7, 5]), blank=0) == [[1, 1, 2], [3, 3, 4]]
    assert greedy_ctc(lp, torch.tensor([7, 5]), blank=0, eos=4) == [[1, 1, 2], [3, 3]]


def test_end_detection_fires_at_the_same_step_as_the_reference(monkeypatch):
    """Peaked CTC-only posteriors: longer hypotheses fall > 10 nats behind, so ESPnet's end detection stops
    each utterance early; the batched search must stop every utterance where the reference stops it."""
    batched_mod = sys.modules["avsr.decoding.beam_search"]
    reference_mod = sys.modules["avsr.decoding.reference"]
    fired_batched: dict[int, list[int]] = {}
    fired_reference: list[int] = []

    def spy_batched(best, by_len, i):
        out = _end_detected(best, by_len, i)
        fired_batched.setdefault(i, []).append(int(out.sum()))
        return out

    def spy_reference(ended, i):
        out = _end_detect_ref(ended, i)
        if out:
            fired_reference.append(i)
        return out

    _end_detected, _end_detect_ref = batched_mod._end_detected, reference_mod._end_detect
    monkeypatch.setattr(batched_mod, "_end_detected", spy_batched)
    monkeypatch.setattr(reference_mod, "_end_detect", spy_reference)

    v, eos, lens = 6, 5, [20, 15, 12]
    logits = torch.zeros(3, 20, v)
    logits[:, :, 0] = 5.0
    for u, spikes in enumerate([[(3, 1), (8, 2), (14, 1)], [(2, 3), (6, 3), (10, 4)], [(5, 2)]]):
        for t, c in spikes:
            logits[u, t, 0], logits[u, t, c] = 0.0, 5.0
    lp = (logits + 0.3 * torch.randn(3, 20, v, generator=torch.Generator().manual_seed(0))).log_softmax(-1)
    args = (None, torch.tensor(lens), lp, None, eos, eos)
    batched = joint_beam_search(*args, beam_size=4, ctc_weight=1.0, nbest=3)
    reference = beam_search_reference(*args, beam_size=4, ctc_weight=1.0, nbest=3)
    for a, b in zip(batched, reference):
        assert_same_nbest(a, b)
    assert [h[0].tokens for h in batched] == [[1, 2, 1], [3, 3, 4], [2]]
    stops = sorted(i for i, counts in fired_batched.items() for _ in range(sum(counts)))
    assert stops == sorted(fired_reference) and len(stops) == 3  # every utterance ended by end detection
    assert max(stops) < min(lens) - 1  # ... before its maximum length


def test_empty_input_gives_no_hypotheses_and_leaves_the_others_alone():
    lp = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    args = (None, torch.tensor([5, 0, 3]), lp, None, 3, 3)
    out = joint_beam_search(*args, beam_size=4, ctc_weight=1.0, nbest=2)
    ref = beam_search_reference(*args, beam_size=4, ctc_weight=1.0, nbest=2)
    assert out[1] == [] and ref[1] == []
    for u in (0, 2):
        assert_same_nbest(out[u], ref[u])
