"""JSONL manifests and the clip dataset that every corpus (real or synthetic) goes through.

One JSON object per line, one video (or one segment of a video) per object::

    {"media": "videos/abc.mp4", "id": "abc", "start": 12.0, "end": 52.0,
     "captions": [{"text": "cut the onions", "start": 14.2, "end": 17.9}, "an untimed caption"],
     "labels": ["cooking"]}

``media`` is required and relative to the manifest's directory (absolute paths work too); everything
else is optional. ``start``/``end`` bound where clips are cut (default: the whole file). Caption times
are seconds on the media's own timeline; a caption without times covers the whole entry. An entry
without captions gives ``text_mask = 0``; a file without an audio stream gives ``audio_mask = 0``.

MIL-NCE positives (Miech et al., 2020; VATT uses 5): the clip's own caption is the one that contains
the clip centre (or is nearest to it), followed by up to P - 1 more captions nearest in time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from cachetools import LRUCache
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.collate import DataFailureError, FailureTracker, ItemFailure, batch_size, collate
from data.media import MediaError, MediaReader
from data.transforms import AudioTransform, PreprocessConfig, VideoTransform

logger = logging.getLogger(__name__)

# Batching lives in data.collate; re-exported so one import serves a training script.
__all__ = [
    "Caption",
    "DataFailureError",
    "FailureTracker",
    "ItemFailure",
    "ManifestDataset",
    "ManifestEntry",
    "ManifestError",
    "TextEncoder",
    "batch_size",
    "caption_texts",
    "clip_starts",
    "collate",
    "nearest_captions",
    "parse_entry",
    "read_manifest",
]

_KEYS = {"media", "id", "start", "end", "captions", "labels"}
_CAPTION_KEYS = {"text", "start", "end"}


class TextEncoder(Protocol):
    """What :class:`ManifestDataset` needs of a tokenizer (:class:`data.tokenizer.Tokenizer` is one).

    A protocol, not an import: ``python -m data.tokenizer`` trains on manifests, so the tokenizer module
    depends on this one and not the other way round.
    """

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class ManifestError(ValueError):
    """A manifest line that does not follow the format; the message names the file and line."""


@dataclass(frozen=True)
class Caption:
    text: str
    start: float | None = None  # None: the caption covers the whole entry
    end: float | None = None


@dataclass(frozen=True)
class ManifestEntry:
    """One parsed manifest line; ``media`` is resolved against the manifest's directory."""

    id: str
    media: Path
    start: float | None = None
    end: float | None = None
    captions: tuple[Caption, ...] = ()
    labels: tuple[str, ...] = ()
    line: int = 0


def _number(value: Any, what: str, where: str) -> float:
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        try:
            seconds = float(value)  # a huge JSON integer overflows here
        except OverflowError:
            seconds = math.inf
        if math.isfinite(seconds):
            return seconds
    raise ManifestError(f"{where}: {what} must be a finite number of seconds, got {str(value)[:40]!r}")


def _check_text(raw: Any, where: str) -> None:
    """Reject strings that are not text: JSON can escape a lone UTF-16 surrogate, which no file path,
    tokenizer or UTF-8 output accepts."""
    try:
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start]
        raise ManifestError(f"{where}: a string holds an unpaired surrogate escape ({bad!r}), expected text") from None


def _parse_caption(raw: Any, where: str) -> Caption:
    if isinstance(raw, str):
        return Caption(raw)
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: a caption must be a string or an object with 'text', got {raw!r}")
    unknown = set(raw) - _CAPTION_KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown caption key(s) {sorted(unknown)}; valid: {sorted(_CAPTION_KEYS)}")
    if not isinstance(raw.get("text"), str):
        raise ManifestError(f"{where}: caption 'text' must be a string, got {raw.get('text')!r}")
    start = _number(raw["start"], "caption start", where) if raw.get("start") is not None else None
    end = _number(raw["end"], "caption end", where) if raw.get("end") is not None else None
    if (start is None) != (end is None):
        raise ManifestError(f"{where}: a caption needs both 'start' and 'end' or neither")
    if start is not None and end is not None and end < start:
        raise ManifestError(f"{where}: caption end {end} is before its start {start}")
    return Caption(raw["text"], start, end)


def parse_entry(raw: Any, base: Path, where: str, line: int = 0) -> ManifestEntry:
    """One manifest object -> :class:`ManifestEntry`; ``where`` prefixes error messages."""
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_KEYS)}")
    _check_text(raw, where)
    media = raw.get("media")
    if not isinstance(media, str) or not media:
        raise ManifestError(f"{where}: 'media' (a path relative to the manifest) is required")
    if "\0" in media:
        raise ManifestError(f"{where}: 'media' holds a NUL character, not a file path")
    start = _number(raw["start"], "start", where) if raw.get("start") is not None else None
    end = _number(raw["end"], "end", where) if raw.get("end") is not None else None
    if start is not None and end is not None and end <= start:
        raise ManifestError(f"{where}: end {end} is not after start {start}")
    captions = raw.get("captions", [])
    if not isinstance(captions, list):
        raise ManifestError(f"{where}: 'captions' must be a list")
    labels = raw.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels):
        raise ManifestError(f"{where}: 'labels' must be a list of strings or integers")
    entry_id = raw.get("id", media if start is None else f"{media}@{start:g}")
    if not isinstance(entry_id, str):
        raise ManifestError(f"{where}: 'id' must be a string, got {entry_id!r}")
    return ManifestEntry(
        id=entry_id,
        media=(base / media).resolve() if not Path(media).is_absolute() else Path(media),
        start=start,
        end=end,
        captions=tuple(_parse_caption(c, f"{where} caption {i}") for i, c in enumerate(captions)),
        labels=tuple(str(x) for x in labels),
        line=line,
    )


def _decode_line(data: bytes, where: str, first: bool) -> str:
    """A manifest line as text: UTF-8 (a byte-order mark before the first line is allowed)."""
    try:
        return data.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at byte column {exc.start + 1}); "
            "expected a UTF-8 JSONL file"
        ) from None


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Parse a JSONL manifest; any bad line raises :class:`ManifestError` naming ``file:line``, and an
    unreadable file (missing, a directory, not UTF-8) one naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, expected a JSONL manifest file")
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = path.parent.resolve()
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    try:
        f = open(path, "rb")  # bytes: a line that is not UTF-8 is reported with its number
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc.strerror or exc})") from None
    with f:
        for n, data in enumerate(f, start=1):
            where = f"{path}:{n}"
            text = _decode_line(data, where, n == 1)
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise ManifestError(f"{where}: invalid JSON (nested too deeply)") from None
            entry = parse_entry(raw, base, where, n)
            if entry.id in seen:
                raise ManifestError(f"{where}: id {entry.id!r} already used on line {seen[entry.id]}")
            seen[entry.id] = n
            entries.append(entry)
    if not entries:
        raise ManifestError(f"{path}: manifest has no entries")
    return entries


def caption_texts(entries: Sequence[ManifestEntry]) -> list[str]:
    """All caption strings of a manifest, in order (for tokenizer training and retrieval galleries)."""
    return [c.text for e in entries for c in e.captions]


def nearest_captions(
    captions: Sequence[Caption],
    clip_start: float,
    clip_end: float,
    k: int,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices of the MIL-NCE positives for the clip ``[clip_start, clip_end)``, own caption first.

    Captions are ranked by their distance in time to the clip centre (0 when the centre lies inside
    the caption), then by how far their own centre is from it; an untimed caption covers everything.
    Remaining ties keep manifest order, or are broken at random when ``generator`` is given (training
    on corpora with several untimed captions per video then sees each of them as the first positive).
    """
    centre = 0.5 * (clip_start + clip_end)

    def key(i: int) -> tuple[float, float]:
        c = captions[i]
        if c.start is None or c.end is None:
            return (0.0, 0.0)
        gap = 0.0 if c.start <= centre <= c.end else min(abs(centre - c.start), abs(centre - c.end))
        return (gap, abs(0.5 * (c.start + c.end) - centre))

    order = list(range(len(captions)))
    if generator is not None:
        order = torch.randperm(len(captions), generator=generator).tolist()
    order.sort(key=key)  # stable: ties keep the (shuffled) order
    return order[:k]


def clip_starts(slack: float, n: int) -> list[float]:
    """Offsets of ``n`` evenly spaced clips in ``slack`` room (a span minus one clip): the first at 0,
    the last at ``slack``; a single clip sits in the middle. Seconds or samples, as ``slack`` is."""
    return [slack * (0.5 if n == 1 else i / (n - 1)) for i in range(n)]


@dataclass
class _Window:
    start: float
    clip_index: int


def _clip_bytes(clip: tuple[torch.Tensor, torch.Tensor | None]) -> int:
    video, audio = clip
    return video.nbytes + (0 if audio is None else audio.nbytes)


def _as_is(item: Any) -> Any:
    return item


class _FixedClips(Dataset):
    """Item ``i``: :meth:`ManifestDataset._fixed_clip` of video ``i`` (what :meth:`~ManifestDataset.prefill` loads),
    its frames and audio as numpy arrays.

    Numpy, not torch: a tensor returned by a DataLoader worker crosses to the main process in shared
    memory passed as a file descriptor (torch's default sharing strategy), and the cache keeps every
    clip, so the main process would hold about two descriptors per clip and hit ``ulimit -n`` (1024 on
    Linux desktops, 256 on macOS) within a few hundred clips. Arrays are pickled through the pipe by
    value; :meth:`~ManifestDataset.prefill` wraps them again with ``torch.from_numpy``.
    """

    def __init__(self, dataset: ManifestDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.entries)

    def __getitem__(self, index: int) -> tuple[int, float, float, tuple[np.ndarray, np.ndarray | None] | None]:
        video_index, duration, start, clip = self.dataset._fixed_clip(index)
        if clip is None:
            return video_index, duration, start, None
        video, audio = clip
        return video_index, duration, start, (video.numpy(), None if audio is None else audio.numpy())


class ManifestDataset(Dataset):
    """Clips from a manifest, decoded with :mod:`data.media` and transformed for VATT.

    train: one item per video, a random clip inside the entry each time; eval: ``clips_per_video``
    uniformly spaced clips per video, items are (video, clip) pairs in a fixed order. A file that
    cannot be decoded gives an :class:`ItemFailure` (never a zero video); :func:`collate`
    drops it and reports it in ``batch["failures"]`` for :class:`FailureTracker`.
    ``entries`` holds the parsed manifest (paths, timed captions, labels) for evaluators.

    ``cache_mb`` > 0 keeps decoded clips (uint8 frames and audio, before augmentation) in memory, least
    recently used out first, keyed by video and window start, so a clip seen again is not decoded again.
    It pays when windows repeat: entries one clip long (the built-in corpus, trimmed segments) or eval
    clips. With random windows in long videos it rarely hits; leave it at 0 there. Each DataLoader
    worker holds its own cache, so the memory is up to ``cache_mb`` per worker; :meth:`prefill` fills
    the cache of this process (and of workers forked after it) before training.
    """

    def __init__(
        self,
        manifest: str | Path | Sequence[ManifestEntry],
        cfg: PreprocessConfig | None = None,
        tokenizer: TextEncoder | None = None,
        train: bool = True,
        clips_per_video: int = 4,
        decode_threads: int = 1,
        with_audio: bool = True,
        cache_mb: float = 0,
    ) -> None:
        self.entries = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
        if clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.cfg = cfg if cfg is not None else PreprocessConfig()
        self.tokenizer = tokenizer
        self.train = train
        self.clips_per_video = clips_per_video
        self.decode_threads = decode_threads
        self.with_audio = with_audio
        self.video_transform = VideoTransform(self.cfg, train)
        self.audio_transform = AudioTransform(self.cfg, train)
        self.cache_mb = cache_mb
        self._durations: dict[int, float] = {}  # video index -> declared duration, to place windows unopened
        self._decoded: LRUCache | None = None  # made lazily: each DataLoader worker fills its own

    def __len__(self) -> int:
        return len(self.entries) if self.train else len(self.entries) * self.clips_per_video

    def locate(self, index: int) -> tuple[int, int]:
        """Item index -> (video index, clip index); in training the clip index is always 0."""
        if self.train:
            return index, 0
        return divmod(index, self.clips_per_video)

    def _segment(self, entry: ManifestEntry, duration: float) -> tuple[float, float]:
        """(first clip start, room left for later starts): the entry's span minus one clip, at least 0."""
        seg_start = entry.start if entry.start is not None else 0.0
        seg_end = entry.end if entry.end is not None else duration
        return seg_start, max(0.0, seg_end - seg_start - self.cfg.clip_seconds)

    def _window(self, entry: ManifestEntry, duration: float, clip_index: int) -> _Window:
        seg_start, slack = self._segment(entry, duration)
        if self.train:
            return _Window(seg_start + slack * torch.rand(()).item(), 0)
        return _Window(seg_start + clip_starts(slack, self.clips_per_video)[clip_index], clip_index)

    def __getitem__(self, index: int) -> dict[str, Any] | ItemFailure:
        video_index, clip_index = self.locate(index)
        entry = self.entries[video_index]
        cfg = self.cfg
        try:
            window, video, audio = self._decode(video_index, clip_index)
        except MediaError as exc:
            return ItemFailure(str(entry.media), str(exc), video_index)
        audio_mask = 0.0 if audio is None else 1.0
        audio = torch.zeros(cfg.audio_samples) if audio is None else self.audio_transform(audio)
        text_ids, text_lengths, text_mask = self._text(entry, window)
        return {
            "video": self.video_transform(video),  # (T, C, H, W) float in [-1, 1]
            "audio": audio,  # (S,)
            "audio_mask": audio_mask,
            "text_ids": text_ids,  # (P, L)
            "text_lengths": text_lengths,  # (P,)
            "text_mask": text_mask,
            "video_index": video_index,
            "clip_index": window.clip_index,
            "id": f"{entry.id}@{window.start:.3f}",
        }

    def _decode(self, video_index: int, clip_index: int) -> tuple[_Window, torch.Tensor, torch.Tensor | None]:
        """The clip's window, uint8 frames and audio (``None`` without audio), from the cache if there."""
        entry = self.entries[video_index]
        duration = self._durations.get(video_index)  # known once the file was opened with the cache on
        window = None if duration is None else self._window(entry, duration, clip_index)
        if window is not None:
            hit = self._cache().get((video_index, window.start))
            if hit is not None:
                return window, *hit
        with MediaReader(entry.media, threads=self.decode_threads) as reader:
            duration = reader.info.duration
            if window is None:  # one random draw per item, whether or not the cache served it
                window = self._window(entry, duration, clip_index)
            clip = self._read(reader, window.start)
        if self.cache_mb > 0:
            self._remember(video_index, duration, window.start, clip)
        return window, *clip

    def _read(self, reader: MediaReader, start: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 frames and audio (``None`` without audio) of the clip starting at ``start``."""
        cfg = self.cfg
        # Scaled while decoding, unless a region in source pixels is cut first (VideoTransform).
        size = None if cfg.region is not None else cfg.resize_size
        video = reader.read_video(start, cfg.num_frames, cfg.fps, size=size)
        audio = reader.read_audio(start, cfg.audio_samples, cfg.sample_rate) if self.with_audio else None
        return video, audio

    def _remember(
        self, video_index: int, duration: float, start: float, clip: tuple[torch.Tensor, torch.Tensor | None]
    ) -> bool:
        """Cache a decoded clip (unless it alone exceeds the cache); returns whether it was kept."""
        self._durations[video_index] = duration
        cache = self._cache()
        if _clip_bytes(clip) > cache.maxsize:
            return False
        cache[(video_index, start)] = clip
        return True

    def prefill(self, num_workers: int = 0, progress: bool = True) -> int:
        """Decode into the cache, with ``num_workers`` processes, every entry that has only one window.

        An entry no longer than one clip is always cut at its start, in training and evaluation alike,
        so its clip is known in advance; longer entries are left to decode on demand, and so are files
        that fail (:meth:`__getitem__` reports them). Returns the number of clips cached.
        """
        if self.cache_mb <= 0:
            raise ValueError("prefill needs cache_mb > 0")
        cfg = self.cfg
        # Square frames at resize_size: a guess (wider or uncropped frames are bigger) that only has to
        # tell a corpus that fits from one that is hopelessly large; the cache itself enforces the limit.
        clip_mb = (cfg.num_frames * 3 * cfg.resize_size**2 + 4 * cfg.audio_samples * self.with_audio) / 2**20
        if clip_mb * len(self.entries) > self.cache_mb:
            logger.info(
                "not prefilling: %d clips need about %.0f MB, the cache holds %.0f MB",
                len(self.entries),
                clip_mb * len(self.entries),
                self.cache_mb,
            )
            return 0
        # Its own generator: seeding the workers must not draw from the training's random stream.
        loader = DataLoader(
            _FixedClips(self), batch_size=None, num_workers=num_workers, collate_fn=_as_is, generator=torch.Generator()
        )
        cached = 0
        bar = tqdm(loader, desc="decoding clips", unit="clip", disable=not progress, leave=False)
        for video_index, duration, start, arrays in bar:
            if arrays is not None:
                video, audio = arrays
                clip = (torch.from_numpy(video), None if audio is None else torch.from_numpy(audio))
                cached += self._remember(video_index, duration, start, clip)
        logger.info("cached %d of %d clips (%.0f MB)", cached, len(self.entries), self._cache().currsize / 2**20)
        return cached

    def _fixed_clip(self, video_index: int) -> tuple[int, float, float, tuple | None]:
        """(video index, duration, start, (video, audio)), the clip None for several windows or a bad file."""
        entry = self.entries[video_index]
        try:
            with MediaReader(entry.media, threads=self.decode_threads) as reader:
                duration = reader.info.duration
                start, slack = self._segment(entry, duration)
                return video_index, duration, start, None if slack > 0 else self._read(reader, start)
        except MediaError:
            return video_index, 0.0, 0.0, None

    def _cache(self) -> LRUCache:
        if self._decoded is None:
            self._decoded = LRUCache(maxsize=int(self.cache_mb * 2**20), getsizeof=_clip_bytes)
        return self._decoded

    def _text(self, entry: ManifestEntry, window: _Window) -> tuple[torch.Tensor, torch.Tensor, float]:
        p, length = self.cfg.num_positives, self.cfg.max_text_len
        ids = torch.zeros(p, length, dtype=torch.int64)
        lengths = torch.zeros(p, dtype=torch.int64)
        if self.tokenizer is None or not entry.captions:
            return ids, lengths, 0.0
        generator = None
        if self.train:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        picked = nearest_captions(
            entry.captions, window.start, window.start + self.cfg.clip_seconds, p, generator=generator
        )
        enc_ids, enc_lengths = self.tokenizer.encode_batch([entry.captions[i].text for i in picked], length)
        ids[: len(picked)] = enc_ids
        lengths[: len(picked)] = enc_lengths
        return ids, lengths, float(enc_lengths[0] > 0)
