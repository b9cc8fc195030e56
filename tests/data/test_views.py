"""Two views of a mouth clip for MoCo: shapes, determinism, windows and crops from inside the clip, normalisation."""

from __future__ import annotations

import pytest
import torch

from data.lrs2 import LRS2Config, MouthTransform
from data.views import MEAN, STD, two_views


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tensors this small gain nothing from threads, and extra threads stall on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def raw(video: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation: values back in [0, 1] (float64 for exact comparisons)."""
    return video.double() * STD + MEAN


def frame_ramp(num_frames: int, size: int = 96) -> torch.Tensor:
    """uint8 clip (T, 1, size, size) whose frame i is i everywhere."""
    return torch.arange(num_frames, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()


def pixel_code(num_frames: int = 16, size: int = 96) -> torch.Tensor:
    """float clip whose pixel (r, c) is (r * size + c + 1) / (size^2 + 1) in every frame: a value names its place."""
    code = (torch.arange(size * size, dtype=torch.float64) + 1) / (size * size + 1)
    return code.view(1, 1, size, size).expand(num_frames, 1, size, size).float()


def locate(view: torch.Tensor, size: int = 96) -> tuple[int, int, bool]:
    """(top, left, flipped) of the crop a view of :func:`pixel_code` was cut from."""
    first = raw(view[0, 0])
    index = lambda v: round(float(v) * (size * size + 1)) - 1  # noqa: E731
    r0, c0 = divmod(index(first[0, 0]), size)
    r1, c1 = divmod(index(first[0, 1]), size)
    assert r1 == r0 and abs(c1 - c0) == 1
    flipped = c1 < c0
    return r0, c0 - view.shape[-1] + 1 if flipped else c0, flipped


def test_shapes_dtype_and_grayscale():
    clip = torch.randint(0, 256, (20, 1, 96, 96), dtype=torch.uint8)
    v1, v2 = two_views(clip, generator=gen(0))
    for v in (v1, v2):
        assert v.video.shape == (16, 1, 88, 88) and v.video.dtype == torch.float32 and v.length == 16
    rgb = torch.randint(0, 256, (20, 3, 96, 96), dtype=torch.uint8)
    assert two_views(rgb, crop=64, frames=8, generator=gen(0))[0].video.shape == (8, 1, 64, 64)
    # RGB is reduced to luma exactly like a grey clip holding that luma
    grey = torch.full((20, 1, 96, 96), 100, dtype=torch.uint8)
    same = grey.expand(20, 3, 96, 96)
    torch.testing.assert_close(
        two_views(same, generator=gen(3))[0].video, two_views(grey, generator=gen(3))[0].video, rtol=0, atol=1e-3
    )


def test_short_clip_is_zero_padded_with_its_length():
    clip = frame_ramp(5) + 40
    v1, v2 = two_views(clip, frames=16, brightness=0, contrast=0, generator=gen(1))
    for v in (v1, v2):
        assert v.length == 5 and v.video.shape == (16, 1, 88, 88)
        assert torch.equal(v.video[5:], torch.zeros(11, 1, 88, 88))
        torch.testing.assert_close(raw(v.video[:5, 0, 0, 0]), (torch.arange(5) + 40).double() / 255)


def test_deterministic_for_a_generator_and_views_differ():
    clip = torch.randint(0, 256, (30, 1, 96, 96), dtype=torch.uint8, generator=gen(9))
    a1, a2 = two_views(clip, generator=gen(4))
    b1, b2 = two_views(clip, generator=gen(4))
    assert torch.equal(a1.video, b1.video) and torch.equal(a2.video, b2.video)
    c1, _ = two_views(clip, generator=gen(5))
    assert not torch.equal(a1.video, c1.video)
    for seed in range(10):
        v1, v2 = two_views(clip, generator=gen(seed))
        assert not torch.equal(v1.video, v2.video)


def test_temporal_windows_are_consecutive_frames_of_the_clip_at_different_offsets():
    num_frames, frames = 21, 16  # 6 possible starts
    seen: set[int] = set()
    for seed in range(60):
        starts = []
        for v in two_views(frame_ramp(num_frames), frames=frames, contrast=0, generator=gen(seed)):
            values = raw(v.video).flatten(1)  # (frames, pixels)
            assert torch.allclose(values, values[:, :1].expand_as(values))  # each frame stays constant
            level = values[:, 0] * 255  # frame index times the brightness factor
            step = level[1] - level[0]
            assert 0.8 - 1e-6 <= step <= 1.2 + 1e-6  # brightness factor
            start = float(level[0] / step)
            assert abs(start - round(start)) < 1e-4 and 0 <= round(start) <= num_frames - frames
            expected = step * (round(start) + torch.arange(frames, dtype=torch.float64))
            torch.testing.assert_close(level, expected, rtol=1e-4, atol=1e-4)
            starts.append(round(start))
        assert starts[0] != starts[1]
        seen.update(starts)
    assert seen == set(range(num_frames - frames + 1))


def test_crops_come_from_inside_the_image_and_flip_horizontally():
    clip = pixel_code()
    tops, lefts, flips = set(), set(), set()
    for seed in range(80):
        for v in two_views(clip, crop=88, frames=16, brightness=0, contrast=0, generator=gen(seed)):
            top, left, flipped = locate(v.video)
            assert 0 <= top <= 8 and 0 <= left <= 8
            expected = clip[:, :, top : top + 88, left : left + 88].double()
            if flipped:
                expected = expected.flip(-1)
            torch.testing.assert_close(raw(v.video), expected, rtol=0, atol=1e-6)
            tops.add(top), lefts.add(left), flips.add(flipped)
    assert {0, 8} <= tops and {0, 8} <= lefts and flips == {False, True}


def test_no_flip_when_its_probability_is_zero():
    for seed in range(20):
        for v in two_views(pixel_code(), hflip_prob=0.0, brightness=0, contrast=0, generator=gen(seed)):
            assert not locate(v.video)[2]


def test_contrast_factor_is_mild_and_random():
    clip = torch.full((16, 1, 96, 96), 0.3)
    clip[:, :, 48:] = 0.7  # two grey levels 0.4 apart; contrast scales their gap
    gaps = set()
    for seed in range(20):
        v, _ = two_views(clip, brightness=0, contrast=0.2, hflip_prob=0, generator=gen(seed))
        x = raw(v.video)
        gap = float(x.max() - x.min()) / 0.4
        assert 0.8 - 1e-5 <= gap <= 1.2 + 1e-5
        gaps.add(round(gap, 4))
    assert len(gaps) > 10


def test_normalised_like_the_lrs2_dataset():
    # With the crop the whole image and no jitter, a view is exactly LRS2's evaluation transform.
    clip = torch.randint(0, 256, (16, 1, 96, 96), dtype=torch.uint8, generator=gen(2))
    v, _ = two_views(clip, crop=96, frames=16, hflip_prob=0, brightness=0, contrast=0, generator=gen(0))
    expected = MouthTransform(LRS2Config(resize=96, crop=96), train=False)(clip)
    torch.testing.assert_close(v.video, expected)
    # statistics: a clip at the mean grey is zero, one std above is one
    at_mean = two_views(torch.full((16, 1, 96, 96), MEAN), contrast=0.2, brightness=0, generator=gen(0))[0]
    assert at_mean.video.abs().max() < 1e-6
    above = two_views(torch.full((16, 1, 96, 96), MEAN + STD), brightness=0, contrast=0, generator=gen(0))[0]
    torch.testing.assert_close(above.video, torch.ones_like(above.video))


def test_rejects_clips_it_cannot_crop():
    with pytest.raises(ValueError, match="crop"):
        two_views(torch.zeros(16, 1, 80, 96), crop=88)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        two_views(torch.zeros(16, 2, 96, 96))
    with pytest.raises(ValueError, match="brightness"):
        two_views(torch.zeros(16, 1, 96, 96), brightness=1.5)
