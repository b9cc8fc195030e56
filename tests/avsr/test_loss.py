"""The hybrid loss against torch's ctc_loss per utterance and a label-smoothed cross-entropy written out in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avsr import HybridLoss
from avsr.model import IGNORE_ID


def reference(ctc_lp, enc_lengths, targets, target_lengths, dec_logits, dec_targets, w, eps):
    b = ctc_lp.shape[0]
    ctc = 0.0
    for i in range(b):
        t, n = int(enc_lengths[i]), int(target_lengths[i])
        ctc += F.ctc_loss(
            ctc_lp[i : i + 1, :t].double().transpose(0, 1),
            targets[i : i + 1, :n],
            torch.tensor([t]),
            torch.tensor([n]),
            blank=0,
            reduction="sum",
        ).item()
    ctc /= b
    logp = dec_logits.double().log_softmax(-1)
    v = logp.shape[-1]
    att = 0.0
    for i in range(b):
        for l in range(dec_targets.shape[1]):
            y = int(dec_targets[i, l])
            if y == IGNORE_ID:
                continue
            att += -(1 - eps) * logp[i, l, y].item() - eps / v * logp[i, l].sum().item()
    att /= b
    return w * ctc + (1 - w) * att, ctc, att


@pytest.mark.parametrize("w, eps", [(0.1, 0.1), (0.3, 0.0), (0.0, 0.2), (1.0, 0.1)])
def test_hybrid_loss_matches_reference(w, eps):
    g = torch.Generator().manual_seed(0)
    b, t, v, l = 3, 12, 7, 4
    ctc_lp = torch.randn(b, t, v, generator=g).log_softmax(-1)
    enc_lengths = torch.tensor([12, 9, 6])
    target_lengths = torch.tensor([4, 2, 3])
    targets = torch.randint(1, v - 1, (b, l), generator=g)
    targets[1, 2:] = -5  # padding content is arbitrary
    dec_logits = torch.randn(b, l + 1, v, generator=g)
    dec_targets = torch.full((b, l + 1), IGNORE_ID)
    for i, n in enumerate(target_lengths.tolist()):
        dec_targets[i, :n] = targets[i, :n]
        dec_targets[i, n] = v - 1  # eos
    out = HybridLoss(ctc_weight=w, label_smoothing=eps)(
        ctc_log_probs=ctc_lp,
        enc_lengths=enc_lengths,
        targets=targets,
        target_lengths=target_lengths,
        dec_logits=dec_logits,
        dec_targets=dec_targets,
    )
    total, ctc, att = reference(ctc_lp, enc_lengths, targets, target_lengths, dec_logits, dec_targets, w, eps)
    assert out["loss"].item() == pytest.approx(total, rel=1e-5)
    if w > 0:
        assert out["loss_ctc"].item() == pytest.approx(ctc, rel=1e-5)
    if w < 1:
        assert out["loss_att"].item() == pytest.approx(att, rel=1e-5)
        acc = (dec_logits.argmax(-1) == dec_targets)[dec_targets != IGNORE_ID].float().mean()
        assert out["acc"].item() == pytest.approx(acc.item())


def test_defaults_and_model_outputs_fit_the_loss():
    import avsr

    crit = HybridLoss()
    assert crit.ctc_weight == 0.1 and crit.label_smoothing == 0.1
    m = avsr.create_model("avsr_test", modalities="a")
    audio = 0.1 * torch.randn(2, 6400)
    targets = torch.tensor([[3, 4, 5], [6, 7, 0]])
    out = m(audio=audio, audio_lengths=torch.tensor([6400, 5000]), targets=targets, target_lengths=torch.tensor([3, 2]))
    losses = crit(**out, targets=targets, target_lengths=torch.tensor([3, 2]))
    assert set(losses) == {"loss", "loss_ctc", "loss_att", "acc"} and torch.isfinite(losses["loss"])
    # decoder targets: y + eos, ignore-padded; decoder input: sos + y
    assert out["dec_targets"].tolist() == [[3, 4, 5, m.eos], [6, 7, m.eos, IGNORE_ID]]
    ys_in, _ = m.decoder_io(targets, torch.tensor([3, 2]))
    assert ys_in[:, 0].tolist() == [m.sos, m.sos] and ys_in[0, 1:].tolist() == [3, 4, 5]
