"""Decode clips from media files with PyAV: frames at a target fps and size, mono audio at a target rate.

One reader serves real corpora (HowTo100M, AudioSet, a user's videos) and the synthetic ones, so the
tests on generated files say something about real data. A clip is the half-open window
``[start, start + num_frames / fps)``:

- video: frame ``k`` is the source frame on screen at ``start + k / fps`` (the last frame whose
  timestamp is not after it), so any source fps maps to exactly ``num_frames`` frames; a clip that runs
  past the end of a video repeats the last frame;
- audio: downmixed to mono, resampled with torchaudio to ``sample_rate`` and cut or zero-padded to
  exactly ``num_samples``; a file without an audio stream gives zeros and ``audio_mask = 0``.

The reader seeks to the keyframe before ``start`` instead of decoding from the beginning, and every
container is closed on exit (open containers leak memory over thousands of clips). Anything that
makes a file unusable (missing, empty, not media, no video stream, truncated) raises
:class:`MediaError` with a one-line reason; the dataset turns it into a skipped, counted item.

Durations a container declares are not trusted for sizing anything: a header can claim an hour for
two seconds of data. Outputs are sized by the request (a clip) or by what the streams hold
(:meth:`MediaReader.video_seconds`; :func:`load_audio`, which also takes a cap).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.functional as AF
from av.video.reformatter import Interpolation

logger = logging.getLogger(__name__)

# A frame is "on screen" at time t if its timestamp is <= t + _EPS (guards float round-off in pts * tb).
_EPS = 1e-6
# Decoded video may end this long before the declared duration (B-frame/priming slack) before the file
# counts as truncated.
_TRUNCATION_SLACK = 0.5


# Area averaging for downscaling; accurate rounding and full chroma interpolation keep flat colours exact
# (without them swscale darkens by 1-2 levels), for about 10% more time at typical sizes.
_SCALER = Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


class MediaError(RuntimeError):
    """A media file that cannot give the requested clip; the message is one line with the reason."""


@dataclass(frozen=True)
class MediaInfo:
    """What a container declares (durations in seconds; ``audio_*`` are 0 without an audio stream)."""

    duration: float
    fps: float
    width: int
    height: int
    has_audio: bool
    sample_rate: int
    audio_channels: int


@dataclass
class Clip:
    """A decoded clip: ``video`` uint8 (T, C, H, W) RGB, ``audio`` float32 (S,) in [-1, 1]."""

    video: torch.Tensor
    audio: torch.Tensor
    audio_mask: float
    start: float
    info: MediaInfo


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _output_size(width: int, height: int, size: int | tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) after resizing: ``int`` = shorter side (aspect kept), ``(H, W)`` = exact."""
    if size is None:
        return width, height
    if isinstance(size, int):
        scale = size / min(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))
    h, w = size
    return int(w), int(h)


class MediaReader:
    """An open media file; use as a context manager so the container is always closed.

    ``threads`` is the decoder thread count (0 lets FFmpeg choose). Inside DataLoader workers 1 is
    usually best: the workers already use the cores.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = threads
        if not self.path.exists():
            raise MediaError(f"file not found: {self.path}")
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise MediaError(f"empty file (0 bytes): {self.path}")
        try:
            self._container = av.open(str(self.path), mode="r")
        except Exception as exc:  # PyAV raises several FFmpeg error types; all mean "not readable media"
            raise MediaError(f"cannot open as media: {self.path} ({_one_line(exc)})") from None
        try:
            self.info = self._probe()
        except BaseException:
            self.close()
            raise

    def _probe(self) -> MediaInfo:
        c = self._container
        if not c.streams.video:
            raise MediaError(f"no video stream: {self.path}")
        vs = c.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or vs.base_rate or 0.0)
        duration = 0.0
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        if c.streams.audio:
            a = c.streams.audio[0].codec_context
            has_audio, sr, ch = True, int(a.sample_rate or 0), int(a.channels or 0)
        else:
            has_audio, sr, ch = False, 0, 0
        if has_audio and sr <= 0:
            raise MediaError(f"audio stream without a sample rate: {self.path}")
        return MediaInfo(duration, fps, vs.codec_context.width, vs.codec_context.height, has_audio, sr, ch)

    @property
    def _origin(self) -> float:
        """Container start time in seconds; clip times are measured from it, as players show them."""
        st = self._container.start_time
        return 0.0 if st is None else st / av.time_base

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _seek(self, stream: av.stream.Stream, t: float) -> None:
        if t <= 0 or stream.time_base is None:
            self._container.seek(0)
            return
        self._container.seek(int(math.floor(t / stream.time_base)), stream=stream, backward=True)

    def read_video(
        self, start: float, num_frames: int, fps: float, size: int | tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``num_frames`` RGB frames sampled at ``fps`` from ``start`` -> uint8 (T, C, H, W)."""
        if num_frames <= 0 or fps <= 0:
            raise ValueError(f"num_frames and fps must be positive, got {num_frames}, {fps}")
        vs = self._container.streams.video[0]
        vs.thread_type = "AUTO" if self.threads != 1 else "SLICE"
        vs.codec_context.thread_count = self.threads
        out_w, out_h = _output_size(self.info.width, self.info.height, size)
        origin = self._origin
        targets = [start + k / fps for k in range(num_frames)]
        picked: list[np.ndarray] = []

        cache: list = [None, None]  # (frame, array): a frame shown at several targets is converted once

        def convert(frame: av.VideoFrame) -> np.ndarray:
            if cache[0] is not frame:
                rgb = frame.to_ndarray(format="rgb24", width=out_w, height=out_h, interpolation=_SCALER, threads=1)
                cache[:] = [frame, rgb]
            return cache[1]

        def decode_from(seek_to: float) -> tuple[av.VideoFrame | None, float | None, bool]:
            """Fill ``picked``; returns the last frame seen, its time and whether a frame preceded start."""
            self._seek(vs, seek_to)
            prev, prev_t, covered_start = None, None, False
            for i, frame in enumerate(self._container.decode(vs)):
                t = frame.time
                if t is None:  # no timestamp: fall back to the frame rate
                    t = i / (self.info.fps or fps)
                t -= origin
                if prev is None and t <= targets[0] + _EPS:
                    covered_start = True
                # Every target before this frame's time shows the previous frame.
                while prev is not None and len(picked) < num_frames and targets[len(picked)] + _EPS < t:
                    picked.append(convert(prev))
                if len(picked) == num_frames:
                    return prev, prev_t, covered_start
                prev, prev_t = frame, t
            return prev, prev_t, covered_start

        try:
            last, last_t, covered = decode_from(start)
            if not covered and start > 0 and len(picked) < num_frames:
                # The seek landed after the start (odd keyframe index): decode from the beginning.
                picked.clear()
                last, last_t, covered = decode_from(0.0)
        except MediaError:
            raise
        except Exception as exc:
            raise MediaError(f"video decode failed: {self.path} ({_one_line(exc)})") from None
        if last is None:
            raise MediaError(f"no decodable video frames: {self.path}")
        if len(picked) < num_frames:
            self._check_not_truncated(last_t, targets[-1])
            # Past the end of the video: hold the last frame.
            picked.append(convert(last))
            while len(picked) < num_frames:
                picked.append(picked[-1])
        video = torch.from_numpy(np.stack(picked))  # (T, H, W, C)
        return video.permute(0, 3, 1, 2).contiguous()  # (T, C, H, W)

    def _check_not_truncated(self, last_t: float | None, needed_t: float) -> None:
        declared = self.info.duration
        if last_t is None or declared <= 0:
            return
        frame_dt = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
        covered_until = last_t + frame_dt
        if covered_until + _TRUNCATION_SLACK < min(needed_t, declared):
            raise MediaError(
                f"truncated video: frames stop at {covered_until:.2f}s but the file declares "
                f"{declared:.2f}s: {self.path}"
            )

    def video_seconds(self, limit: float | None = None) -> float:
        """Seconds of video the file holds, from the timestamps of its packets (demuxed, not decoded),
        not from the declared duration: the last frame's time plus the mean frame spacing.

        Reading stops at the first frame after ``limit`` (the result is then above ``limit``). A file
        whose index lists more frames than its data holds (a cut download) raises :class:`MediaError`.
        """
        vs = self._container.streams.video[0]
        origin = self._origin
        first = last = None
        count = 0
        try:
            self._container.seek(0)
            for packet in self._container.demux(vs):
                if packet.pts is None or packet.time_base is None:  # the flush packet, or no timestamp
                    continue
                t = float(packet.pts * packet.time_base) - origin
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
                count += 1
                if limit is not None and last > limit:
                    return last + (last - first) / max(1, count - 1)
        except Exception as exc:
            raise MediaError(f"video demux failed: {self.path} ({_one_line(exc)})") from None
        if first is None or last is None:
            raise MediaError(f"no video packets: {self.path}")
        fps = self.info.fps
        listed = vs.frames  # frames in the container's index (0 when it has none, e.g. Matroska)
        if listed and count + _TRUNCATION_SLACK * fps < listed:
            raise MediaError(f"truncated video: the index lists {listed} frames, the data holds {count}: {self.path}")
        step = (last - first) / (count - 1) if count > 1 else (1.0 / fps if fps > 0 else 0.0)
        return last + step

    def read_audio(self, start: float, num_samples: int, sample_rate: int) -> torch.Tensor | None:
        """Mono float32 (num_samples,) at ``sample_rate`` from ``start``; ``None`` without an audio stream."""
        if not self.info.has_audio:
            return None
        astream = self._container.streams.audio[0]
        native = self.info.sample_rate
        origin = self._origin
        duration = num_samples / sample_rate
        # Decode a margin on both sides so the resampling filter has context at the clip edges.
        margin = 64 / min(native, sample_rate) + 0.01
        lo = max(0.0, start - margin)
        first = math.floor(lo * native)  # native index of the buffer's first sample
        length = math.ceil((start + duration + margin) * native) - first
        buf = np.zeros(length, dtype=np.float32)
        converter = av.AudioResampler(format="fltp")  # format only: keeps rate and channels
        try:
            self._seek(astream, lo)
            for frame in self._container.decode(astream):
                if frame.time is None:
                    continue
                begin = round((frame.time - origin) * native) - first
                if begin >= length:
                    break
                chunks = [f.to_ndarray() for f in converter.resample(frame)]
                if not chunks:
                    continue
                samples = np.concatenate(chunks, axis=1).mean(axis=0)  # (C, n) -> (n,) mono
                end = begin + samples.shape[0]
                if end <= 0:
                    continue
                s0 = max(0, -begin)
                buf[begin + s0 : min(end, length)] = samples[s0 : s0 + min(end, length) - begin - s0]
        except Exception as exc:
            raise MediaError(f"audio decode failed: {self.path} ({_one_line(exc)})") from None
        wave = torch.from_numpy(buf)
        if native != sample_rate:
            wave = AF.resample(wave, native, sample_rate)
        # Resampled index of the clip start; the buffer starts at time first / native.
        offset = round((start - first / native) * sample_rate)
        wave = wave[offset : offset + num_samples]
        if wave.shape[0] < num_samples:
            wave = torch.nn.functional.pad(wave, (0, num_samples - wave.shape[0]))
        return wave.clamp_(-1.0, 1.0).contiguous()


def load_audio(path: str | Path, sample_rate: int, max_seconds: float | None = 60.0) -> torch.Tensor:
    """The first audio stream of any media file (audio-only too) from its start, as mono float32 (S,) at
    ``sample_rate``: at most ``max_seconds`` (None: the whole stream) are decoded and kept.

    S follows the decoded samples (frames concatenated, as the codec delivers them), never the declared
    duration; values are not clipped. Decoded with PyAV at the file's own rate and resampled with
    torchaudio, as :meth:`MediaReader.read_audio` does.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    chunks: list[np.ndarray] = []
    native = 0
    have = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaError(f"no audio stream: {path}")
            stream = container.streams.audio[0]
            converter = av.AudioResampler(format="fltp")  # format only: keeps rate and channels
            for frame in container.decode(stream):
                native = native or int(frame.sample_rate or stream.codec_context.sample_rate or 0)
                for f in converter.resample(frame):
                    chunks.append(f.to_ndarray().mean(axis=0))  # (C, n) -> (n,) mono
                    have += chunks[-1].shape[0]
                # Samples beyond the cap give the resampling filter its right-hand context (as read_audio).
                context = math.ceil(64 * native / min(native, sample_rate)) if native else 0
                if max_seconds is not None and native and have >= math.ceil(max_seconds * native) + context:
                    break
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises several FFmpeg error types; all mean "not readable audio"
        raise MediaError(f"cannot decode audio: {path} ({_one_line(exc)})") from None
    if not chunks or native <= 0:
        raise MediaError(f"no decodable audio: {path}")
    wave = torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))
    if native != sample_rate:
        wave = AF.resample(wave, native, sample_rate)
    if max_seconds is not None:
        wave = wave[: round(max_seconds * sample_rate)]
    return wave.contiguous()


def probe(path: str | Path) -> MediaInfo:
    """Read a file's declared duration, fps, size and audio format (opens and closes it)."""
    with MediaReader(path) as reader:
        return reader.info


def decode_clip(
    path: str | Path,
    start: float,
    num_frames: int,
    fps: float,
    sample_rate: int,
    num_samples: int | None = None,
    size: int | tuple[int, int] | None = None,
    threads: int = 1,
    with_audio: bool = True,
) -> Clip:
    """Decode the clip ``[start, start + num_frames / fps)`` of ``path``.

    ``num_samples`` defaults to ``round(sample_rate * num_frames / fps)``; ``size`` is the shorter side
    (int, aspect kept) or an exact ``(H, W)``. ``with_audio=False`` skips audio decoding (zeros, mask 0).
    """
    if num_samples is None:
        num_samples = round(sample_rate * num_frames / fps)
    with MediaReader(path, threads=threads) as reader:
        video = reader.read_video(start, num_frames, fps, size)
        audio = reader.read_audio(start, num_samples, sample_rate) if with_audio else None
        info = reader.info
    if audio is None:
        return Clip(video, torch.zeros(num_samples), 0.0, start, info)
    return Clip(video, audio, 1.0, start, info)
