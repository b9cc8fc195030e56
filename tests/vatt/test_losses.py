"""NCE / MIL-NCE against a float64 reference written from the equations with Python loops."""

import math

import pytest
import torch

from vatt.losses import MILNCELoss, NCELoss, VattLoss

TAU = 0.07


def _lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def reference_milnce(x, y, valid, tau=TAU) -> float:
    """Brute force over clips and pairs, float64, from the equations in vatt.losses' docstring."""
    x = torch.nn.functional.normalize(x.double(), dim=-1).tolist()
    y = torch.nn.functional.normalize(y.double(), dim=-1).tolist()
    valid = valid.tolist()
    B, P = len(y), len(y[0])

    def s(a, b):
        return sum(ai * bi for ai, bi in zip(a, b)) / tau

    rows = [i for i in range(B) if any(valid[i])]
    if not rows:
        return 0.0
    x2y = y2x = 0.0
    for i in rows:
        pos = _lse([s(x[i], y[i][p]) for p in range(P) if valid[i][p]])
        den_x2y = _lse([s(x[i], y[c][p]) for c in range(B) for p in range(P) if valid[c][p]])
        den_y2x = _lse([s(y[i][p], x[c]) for p in range(P) if valid[i][p] for c in range(B)])
        x2y += den_x2y - pos
        y2x += den_y2x - pos
    return x2y / len(rows) + y2x / len(rows)


def _data(B=6, P=3, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, D, generator=g, dtype=torch.float64),  # video_va
        torch.randn(B, D, generator=g, dtype=torch.float64),  # audio_va
        torch.randn(B, D, generator=g, dtype=torch.float64),  # video_vt
        torch.randn(B, P, D, generator=g, dtype=torch.float64),  # text_vt
    )


def test_nce_matches_reference_without_and_with_mask():
    video, audio, _, _ = _data()
    got = NCELoss(TAU)(video, audio)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(reference_milnce(video, audio[:, None], torch.ones(6, 1)), rel=1e-10)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    got = NCELoss(TAU)(video, audio, audio_mask=mask)
    want = reference_milnce(video, audio[:, None], mask[:, None].bool())
    assert got.item() == pytest.approx(want, rel=1e-10)
    # the masked clips' audio really left the loss: changing it changes nothing
    audio2 = audio.clone()
    audio2[1] = torch.randn(8, dtype=torch.float64)
    assert NCELoss(TAU)(video, audio2, audio_mask=mask).item() == pytest.approx(got.item(), rel=1e-12)


def test_nce_single_pair_is_symmetric_cross_entropy():
    # with P = 1 and no masks the loss is CE(rows) + CE(columns) of the similarity matrix (CLIP-style)
    video, audio, _, _ = _data()
    v = torch.nn.functional.normalize(video, dim=-1)
    a = torch.nn.functional.normalize(audio, dim=-1)
    logits = v @ a.t() / TAU
    labels = torch.arange(6)
    ce = torch.nn.functional.cross_entropy
    want = ce(logits, labels) + ce(logits.t(), labels)
    assert NCELoss(TAU)(video, audio).item() == pytest.approx(want.item(), rel=1e-10)


def test_milnce_matches_reference_with_slot_and_clip_masks():
    _, _, video, text = _data()
    lengths = torch.tensor([[3, 2, 5], [4, 0, 0], [1, 1, 1], [0, 0, 0], [2, 7, 0], [6, 6, 6]])
    text_mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    got = MILNCELoss(TAU)(video, text)
    assert got.item() == pytest.approx(reference_milnce(video, text, torch.ones(6, 3)), rel=1e-10)
    got = MILNCELoss(TAU)(video, text, text_lengths=lengths, text_mask=text_mask)
    valid = (lengths > 0) & (text_mask[:, None] > 0)
    assert got.item() == pytest.approx(reference_milnce(video, text, valid), rel=1e-10)


def test_total_is_mean_of_terms_and_all_masked_is_zero_with_finite_grads():
    video_va, audio_va, video_vt, text_vt = (t.requires_grad_() for t in _data())
    lengths = torch.ones(6, 3, dtype=torch.long)
    out = VattLoss(TAU)(video_va, video_vt, audio_va, text_vt, lengths, torch.ones(6), torch.zeros(6))
    assert out["loss_milnce"].item() == 0.0
    assert out["loss"].item() == pytest.approx((out["loss_nce"].item() + 0.0) / 2, rel=1e-12)
    out["loss"].backward()
    assert torch.isfinite(text_vt.grad).all() and text_vt.grad.abs().max() == 0
    assert torch.isfinite(video_va.grad).all() and video_va.grad.abs().max() > 0


def test_gradient_matches_float64_autograd_of_reference_formula():
    # float32 inputs: compare the loss gradient with a float64 finite-difference check of the reference
    _, _, video, text = _data(B=4, P=2, D=5, seed=3)
    valid = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]]).bool()
    v = video.clone().requires_grad_()
    loss = MILNCELoss(TAU)(v, text, text_lengths=valid.long())
    loss.backward()
    eps = 1e-6
    for i, j in [(0, 0), (1, 3), (3, 4)]:
        vp, vm = video.clone(), video.clone()
        vp[i, j] += eps
        vm[i, j] -= eps
        fd = (reference_milnce(vp, text, valid) - reference_milnce(vm, text, valid)) / (2 * eps)
        assert v.grad[i, j].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)
    assert v.grad[2].abs().max() > 0  # clip 2 has no text, but its video is still a negative for others
