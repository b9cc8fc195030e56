"""Layers against independent references: T5 buckets, position resampling, masks, batch norm."""

import math

import numpy as np
import pytest
import torch

from vatt.layers import (
    CrossProcessBatchNorm1d,
    RelativePositionBias,
    SpectrogramEmbed,
    make_pad_mask,
    relative_position_bucket,
    resample_positions,
)


def t5_bucket_reference(rel: int, num_buckets: int = 32, max_distance: int = 64) -> int:
    """Scalar transcription of T5's bidirectional bucketing (Raffel et al. 2020, Mesh TensorFlow)."""
    half = num_buckets // 2
    out = half if rel > 0 else 0
    n = abs(rel)
    exact = half // 2
    if n < exact:
        return out + n
    val = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (half - exact))
    return out + min(val, half - 1)


def test_relative_position_bucket_matches_scalar_reference():
    rel = torch.arange(-200, 201)
    got = relative_position_bucket(rel, 32, 64).tolist()
    assert got == [t5_bucket_reference(r) for r in rel.tolist()]
    assert got[200] == 0 and got[201] == 17 and got[199] == 1  # 0, +1, -1
    assert max(got) == 31 and min(got) == 0


def test_relative_bias_is_shift_invariant_and_per_head():
    rpb = RelativePositionBias(num_heads=3)
    b = rpb(7)
    assert b.shape == (1, 3, 7, 7)
    torch.testing.assert_close(b[0, :, 1:, 1:], b[0, :, :-1, :-1])  # depends on key - query only
    torch.testing.assert_close(rpb(4)[0], b[0, :, :4, :4])


def test_resample_positions_is_linear_interpolation():
    table = torch.randn(8, 5, dtype=torch.float64)
    assert resample_positions(table, 8) is table
    got = resample_positions(table, 12)
    # align_corners=False: output i samples input coordinate (i + 0.5) * 8 / 12 - 0.5, clamped to the ends
    coords = np.clip((np.arange(12) + 0.5) * 8 / 12 - 0.5, 0, 7)
    want = np.stack([np.interp(coords, np.arange(8), table[:, d].numpy()) for d in range(5)], axis=1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_make_pad_mask():
    m = make_pad_mask(torch.tensor([0, 2, 4]), 4)
    assert m.tolist() == [[True] * 4, [False, False, True, True], [False] * 4]


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_without_process_group_is_plain_batchnorm(momentum):
    torch.manual_seed(0)
    ours, ref = CrossProcessBatchNorm1d(6, momentum=momentum), torch.nn.BatchNorm1d(6, momentum=momentum)
    x = torch.randn(5, 6) * 3 + 1
    for _ in range(2):
        torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_spectrogram_embed_matches_a_float64_reference():
    """Token i's features: log power of the Hann-windowed 2p samples centred on patch i (numpy's rfft in
    float64, zeros past the ends), standardised over the clip; invariant to the clip's gain."""
    p, S = 16, 16 * 7 + 5  # a trailing partial patch is dropped
    embed = SpectrogramEmbed(8, p)
    audio = torch.randn(2, S, generator=torch.Generator().manual_seed(0))
    audio[1, : S // 2] *= 0.01  # a quiet half stays quiet relative to the loud one
    x = np.pad(audio.double().numpy()[:, : 7 * p], ((0, 0), (p // 2, p // 2)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2 * p) / (2 * p))
    frames = np.stack([x[:, i * p : i * p + 2 * p] for i in range(7)], axis=1)  # (B, 7, 2p)
    logp = np.log(np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2 + 1e-10)
    ref = (logp - logp.mean((1, 2), keepdims=True)) / logp.std((1, 2), ddof=1, keepdims=True)
    got = embed.features(audio)
    assert got.shape == (2, 7, p + 1)
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-4)
    torch.testing.assert_close(embed.features(5.0 * audio), got, atol=2e-4, rtol=0)
    assert embed(audio).shape == (2, 7, 8)
    with pytest.raises(ValueError, match="even"):
        SpectrogramEmbed(8, 15)
