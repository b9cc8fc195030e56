"""Clip decoding is exact on files with known content; bad files raise one-line MediaErrors."""

from __future__ import annotations

import math
import os
import struct
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data.media import MediaError, MediaReader, decode_clip, load_audio, probe
from data.synth.mediawriter import write_mp4
from tests.data.conftest import GREY_FPS, GREY_FRAMES, SR, fast_level, grey_level, sine

TOL = 1.0  # H.264 at crf 18 on flat grey frames plus the limited-range YUV round trip


def decoded_indices(video: torch.Tensor, level) -> list[int]:
    """Which source frame each decoded frame is, read back from its grey level (levels 3-4 apart)."""
    means = video.float().mean(dim=(1, 2, 3))
    table = torch.tensor([float(level(i)) for i in range(64)])
    assert ((means[:, None] - table[None]).abs().min(dim=1).values <= TOL).all(), means
    return (means[:, None] - table[None]).abs().argmin(dim=1).tolist()


def expected_index(start: float, k: int, fps: float, src_fps: float) -> int:
    """Reference in float64: the source frame on screen at start + k / fps."""
    return int(math.floor((start + k / fps) * src_fps + 1e-9))


def peak_frequency(x: torch.Tensor, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x.double().numpy() * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1 / sr)[spec.argmax()])


@pytest.mark.parametrize(
    "start, num_frames, fps",
    [(0.0, 32, 10.0), (1.0, 8, 5.0), (0.7, 16, 20.0), (2.3, 10, 10.0), (1.25, 7, 3.0)],
)
def test_frames_resampled_to_target_fps(grey_ramp, start, num_frames, fps):
    clip = decode_clip(grey_ramp, start, num_frames, fps, SR)
    assert clip.video.dtype == torch.uint8 and clip.video.shape == (num_frames, 3, 32, 48)
    want = [min(expected_index(start, k, fps, GREY_FPS), GREY_FRAMES - 1) for k in range(num_frames)]
    assert decoded_indices(clip.video, grey_level) == want


def test_non_integer_fps_ratio(fast_ramp):
    """25 fps source read at 10 fps from a time that is not on a keyframe."""
    start, n, fps = 1.37, 10, 10.0
    clip = decode_clip(fast_ramp, start, n, fps, SR)
    assert decoded_indices(clip.video, fast_level) == [expected_index(start, k, fps, 25.0) for k in range(n)]


def test_colour_channels_in_rgb_order(rgb_file):
    clip = decode_clip(rgb_file, 0.0, 3, 1.0, SR)  # one frame per second: red, green, blue
    means = clip.video.float().mean(dim=(2, 3))  # (T, C)
    assert means.argmax(dim=1).tolist() == [0, 1, 2]
    assert (means.max(dim=1).values > 200).all() and (means.min(dim=1).values < 50).all()


def test_past_the_end_holds_last_frame_and_pads_audio(grey_ramp):
    start = (GREY_FRAMES - 4) / GREY_FPS  # 4 real frames left
    clip = decode_clip(grey_ramp, start, 10, GREY_FPS, SR)
    last = GREY_FRAMES - 1
    assert decoded_indices(clip.video, grey_level) == [last - 3, last - 2, last - 1] + [last] * 7
    assert clip.audio.shape == (SR,) and clip.audio_mask == 1.0
    assert clip.audio[int(0.45 * SR) :].abs().max() == 0  # beyond 4.8 s: zero padding


@pytest.mark.parametrize("sample_rate", [48000, 16000, 8000, 22050])
def test_sine_survives_resampling_with_exact_sample_count(grey_ramp, sample_rate):
    num_frames, fps = 16, 10.0
    clip = decode_clip(grey_ramp, 1.5, num_frames, fps, sample_rate)
    assert clip.audio.dtype == torch.float32
    assert clip.audio.shape == (round(sample_rate * num_frames / fps),)
    assert clip.audio_mask == 1.0
    assert abs(peak_frequency(clip.audio, sample_rate) - 1000.0) <= sample_rate / clip.audio.shape[0]
    rms = clip.audio.double().pow(2).mean().sqrt().item()
    assert abs(rms - 0.5 / math.sqrt(2)) < 0.03  # amplitude kept (AAC is lossy, not far off)


@pytest.mark.parametrize("sample_rate", [48000, 8000])
def test_audio_aligned_with_clip_start(grey_ramp, sample_rate):
    """The sine starts at 1.0 s in the file, so 0.4 s into a clip that starts at 0.6 s."""
    clip = decode_clip(grey_ramp, 0.6, 8, 10.0, sample_rate)
    onset = (clip.audio.abs() > 0.1).nonzero()[0].item()
    assert abs(onset / sample_rate - 0.4) < 0.003
    assert clip.audio[: int(0.38 * sample_rate)].abs().max() < 0.02  # silence before it


def test_stereo_44k_downmixed_and_resampled(stereo_44k):
    clip = decode_clip(stereo_44k, 0.5, 10, 10.0, 48000)
    assert clip.audio.shape == (48000,)
    assert abs(peak_frequency(clip.audio, 48000) - 300.0) <= 1.0
    rms = clip.audio.double().pow(2).mean().sqrt().item()
    assert abs(rms - 0.45 / math.sqrt(2)) < 0.03  # mean of the channels: (0.6 + 0.3) / 2


def test_no_audio_stream_gives_zeros_and_mask_zero(fast_ramp):
    clip = decode_clip(fast_ramp, 0.0, 4, 10.0, 48000)
    assert clip.audio_mask == 0.0
    assert clip.audio.shape == (round(48000 * 4 / 10.0),) and clip.audio.abs().max() == 0


def test_resize_on_decode(grey_ramp):
    short = decode_clip(grey_ramp, 0.0, 2, 10.0, SR, size=16)
    assert short.video.shape == (2, 3, 16, 24)  # 32x48 with the shorter side at 16
    exact = decode_clip(grey_ramp, 0.0, 2, 10.0, SR, size=(20, 20))
    assert exact.video.shape == (2, 3, 20, 20)
    assert decoded_indices(exact.video, grey_level) == decoded_indices(short.video, grey_level) == [0, 1]


def test_probe(grey_ramp, fast_ramp):
    info = probe(grey_ramp)
    assert info.duration == pytest.approx(GREY_FRAMES / GREY_FPS, abs=0.01)
    assert info.fps == pytest.approx(GREY_FPS) and (info.width, info.height) == (48, 32)
    assert info.has_audio and info.sample_rate == SR and info.audio_channels == 1
    assert not probe(fast_ramp).has_audio


@pytest.mark.parametrize("kind", ["truncated", "truncated_faststart", "text", "empty", "missing", "no_video"])
def test_bad_media_raise_one_line_media_error(bad_files, kind):
    path = bad_files[kind]
    with pytest.raises(MediaError) as info:
        decode_clip(path, 0.0, 32, 10.0, SR)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_containers_closed_no_fd_leak(grey_ramp, bad_files: dict[str, Path]):
    decode_clip(grey_ramp, 0.0, 2, 10.0, SR)  # warm up lazy imports
    before = _open_fds()
    for i in range(150):
        decode_clip(grey_ramp, (i % 40) / 10, 4, 10.0, SR)
        with pytest.raises(MediaError):
            MediaReader(bad_files["no_video"])  # fails after opening: must still close
    assert _open_fds() <= before


def test_writer_is_deterministic(tmp_path):
    """Same content, same bytes (libx264's mb-tree made 112x112 files differ from run to run)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(12, 112, 112, 3), dtype=np.uint8)
    frames[:, 20:60, 30:70] = (200, 40, 40)
    audio = rng.uniform(-0.5, 0.5, 16000).astype(np.float32)
    blobs = {write_mp4(tmp_path / f"{i}.mp4", frames, 10.0, audio, SR).read_bytes() for i in range(6)}
    assert len(blobs) == 1


def test_decoder_threads_give_same_frames(grey_ramp):
    one = decode_clip(grey_ramp, 1.1, 12, 10.0, SR, threads=1)
    auto = decode_clip(grey_ramp, 1.1, 12, 10.0, SR, threads=0)
    assert torch.equal(one.video, auto.video) and torch.equal(one.audio, auto.audio)


# --------------------------------------------------------------------------- declared sizes are not trusted


def write_mkv_declaring(
    path: Path,
    frames: np.ndarray | None,
    fps: int,
    audio: np.ndarray | None,
    sample_rate: int,
    declared: float,
) -> Path:
    """Matroska holding ``frames`` (T, H, W, 3) uint8 and mono ``audio`` (float32 as AAC, int16 as PCM)
    whose header declares ``declared`` seconds. FFmpeg probes a container from its content, so the file
    may carry an .mp4 name, as LRS2 clips do. (MP4 and WAV headers cannot lie this way: FFmpeg bounds
    their durations by the sample tables and the file size.)"""
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("h264", rate=Fraction(fps)) if frames is not None else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        pcm = audio is not None and audio.dtype == np.int16
        aus = None
        if audio is not None:
            aus = c.add_stream("pcm_s16le" if pcm else "aac", rate=sample_rate, layout="mono")
        for i, image in enumerate(frames if frames is not None else []):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        if vs is not None:
            c.mux(vs.encode(None))
        if aus is not None:
            af = av.AudioFrame.from_ndarray(audio[None], format="s16" if pcm else "fltp", layout="mono")
            af.sample_rate, af.pts = sample_rate, 0
            c.mux(aus.encode(af))
            c.mux(aus.encode(None))
    data = bytearray(path.read_bytes())
    # Segment Info: TimestampScale (0x2AD7B1) of 1 ms, then Duration (0x4489) as an 8-byte float in ms.
    assert data.count(b"\x2a\xd7\xb1\x83\x0f\x42\x40") == 1 and data.count(b"\x44\x89\x88") == 1
    at = data.index(b"\x44\x89\x88") + 3
    struct.pack_into(">d", data, at, declared * 1000.0)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 frames at 25 fps (2 s) and 2 s of a 440 Hz sine, in a container that declares one hour."""
    frames = np.zeros((50, 32, 32, 3), np.uint8)
    for i in range(50):
        frames[i] = fast_level(i)
    path = tmp_path_factory.mktemp("liar") / "liar.mp4"
    return write_mkv_declaring(path, frames, 25, sine(440.0, 2.0), SR, declared=3600.0)


def test_video_seconds_follow_the_frames_not_the_header(liar, grey_ramp, fast_ramp):
    assert probe(liar).duration == pytest.approx(3600.0)  # what the header claims
    with MediaReader(liar) as reader:
        assert reader.video_seconds() == pytest.approx(50 / 25.0, abs=1e-6)
        assert reader.video_seconds(limit=1.0) > 1.0  # stops reading once past the limit
        # Reading frames afterwards still starts from the beginning.
        assert decoded_indices(reader.read_video(0.0, 50, 25.0), fast_level) == list(range(50))
    with MediaReader(grey_ramp) as reader:
        assert reader.video_seconds() == pytest.approx(GREY_FRAMES / GREY_FPS, abs=1e-6)
    with MediaReader(fast_ramp) as reader:
        assert reader.video_seconds() == pytest.approx(60 / 25.0, abs=1e-6)


def test_video_seconds_detects_a_cut_download(tmp_path):
    """Index first, data cut: the index lists every frame, the data holds fewer."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(50, 64, 64, 3), dtype=np.uint8)  # noise: the data dominates
    full = write_mp4(tmp_path / "full.mp4", frames, 25.0, None, SR, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with MediaReader(cut) as reader, pytest.raises(MediaError, match=r"^truncated video: .*cut\.mp4$"):
        reader.video_seconds()


def test_load_audio_reads_the_content_up_to_a_cap(tmp_path, fast_ramp):
    rng = np.random.default_rng(1)
    samples = (rng.uniform(-0.5, 0.5, 3 * SR) * 32767).astype(np.int16)  # 3 s
    path = write_mkv_declaring(tmp_path / "liar.mka", None, 25, samples, SR, declared=3600.0)
    with av.open(str(path)) as c:
        assert c.duration / av.time_base == pytest.approx(3600.0)  # what the header claims
    want = samples.astype(np.float64) / 32768.0  # s16 -> float, as FFmpeg converts it
    tracemalloc.start()
    try:
        whole = load_audio(path, SR, max_seconds=None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole.shape == (3 * SR,) and np.allclose(whole.double().numpy(), want, atol=1e-7)
    assert peak < 8 * 2**20  # the 3 s take 0.2 MB as float32; a buffer for the declared hour 230 MB
    capped = load_audio(path, SR, max_seconds=1.25)
    assert torch.equal(capped, whole[: round(1.25 * SR)])
    # Resampled: the cap keeps the filter's context, so the prefix matches the whole file's.
    at_8k = load_audio(path, 8000, max_seconds=None)
    assert abs(at_8k.shape[0] - 3 * 8000) <= 1
    assert torch.allclose(load_audio(path, 8000, max_seconds=1.25), at_8k[:10000], atol=1e-6)
    with pytest.raises(MediaError, match=r"^no audio stream: .*fast\.mp4$"):
        load_audio(fast_ramp, SR)
