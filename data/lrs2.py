"""LRS2 as distributed: transcripts, split lists, and a dataset of mouth crops, audio and text.

Layout (Afouras et al., 2018; the synthetic corpus of :mod:`data.synth.speech` writes the same)::

    ROOT/mvlrs_v1/main/<programme>/<clip>.mp4 and .txt      (train, val and test utterances)
    ROOT/mvlrs_v1/pretrain/<programme>/<clip>.mp4 and .txt  (longer pretraining segments)
    ROOT/pretrain.txt train.txt val.txt test.txt             (one clip id per line)

Split lines start with the clip id ``<programme>/<clip>``; test lines add a flag field (``NF``/``MV``).
A main transcript holds ``Text:  WORDS`` and ``Conf:  N`` (two spaces after the colon); a pretrain
transcript adds a blank line, the header ``WORD START END ASDSCORE`` and one timed line per word.
Anything else is rejected with :class:`LRS2FormatError` naming the file and line.

:class:`LRS2Dataset` yields, per utterance, the grayscale mouth region at 25 fps (from per-clip
landmark files when given, else a fixed box of LRS2's 160x160 face-tracked frames; resized to 96x96,
then an 88x88 crop, random in training and central in evaluation; normalised with mean 0.421 and
std 0.165, as auto_avsr does), 16 kHz mono audio, the transcript and the lengths;
:func:`collate_lrs2` pads them into a batch.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from data.collate import ItemFailure
from data.files import atomic_write_json
from data.media import MediaError, MediaReader, probe

logger = logging.getLogger(__name__)

SPLITS = ("pretrain", "train", "val", "test")
TABLE_HEADER = ("WORD", "START", "END", "ASDSCORE")
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*(.*)$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


class LRS2FormatError(ValueError):
    """A transcript or split list that does not follow the LRS2 format; the message names file and line."""


@dataclass(frozen=True)
class WordTiming:
    """A word of a pretrain transcript with its start and end in seconds and its active-speaker score."""

    word: str
    start: float
    end: float
    score: float


@dataclass
class Transcript:
    """A parsed transcript: the ``Text`` line, the confidence as written (None when absent), any other
    ``Key:  value`` header lines, and word timings for pretrain transcripts (None for main ones)."""

    text: str
    conf: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    words: list[WordTiming] | None = None


def parse_transcript(content: str, source: str = "<string>") -> Transcript:
    """Parse the text of an LRS2 ``.txt`` transcript; ``source`` names it in errors."""
    lines = content.splitlines()

    def fail(lineno: int, why: str) -> LRS2FormatError:
        shown = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
        return LRS2FormatError(f"{source}:{lineno}: {why} (line: {shown!r})")

    fields: dict[str, str] = {}
    where: dict[str, int] = {}
    i = 0
    while i < len(lines) and lines[i].strip() and tuple(lines[i].split()) != TABLE_HEADER:
        m = _HEADER_LINE.match(lines[i].strip())
        if m is None:
            raise fail(i + 1, "expected a 'Key:  value' header line such as 'Text:  WORDS'")
        key = m.group(1)
        if key in fields:
            raise fail(i + 1, f"repeated header {key!r}")
        fields[key], where[key] = m.group(2).strip(), i + 1
        i += 1
    if "Text" not in fields:
        raise fail(max(1, i), "no 'Text:' line in the header")
    text = " ".join(fields.pop("Text").split())
    if not text:
        raise fail(where["Text"], "empty 'Text:' line")
    conf = fields.pop("Conf", None)
    if conf is not None and not _NUMBER.match(conf):
        raise fail(where["Conf"], "'Conf:' is not a number")

    # Skip the blank line(s) between the header and an optional word table.
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        return Transcript(text=text, conf=conf, fields=fields, words=None)
    if tuple(lines[i].split()) != TABLE_HEADER:
        raise fail(i + 1, f"expected the word table header {' '.join(TABLE_HEADER)!r}")
    words: list[WordTiming] = []
    for j in range(i + 1, len(lines)):
        parts = lines[j].split()
        if not parts:
            continue
        if len(parts) != 4:
            raise fail(j + 1, "a word line needs 4 fields: WORD START END ASDSCORE")
        try:
            start, end, score = float(parts[1]), float(parts[2]), float(parts[3])
        except ValueError:
            raise fail(j + 1, "START, END and ASDSCORE must be numbers") from None
        if end < start or start < 0:
            raise fail(j + 1, f"word times must satisfy 0 <= START <= END, got {start} and {end}")
        if words and start < words[-1].start:
            raise fail(j + 1, "word start times go backwards")
        words.append(WordTiming(parts[0], start, end, score))
    if not words:
        raise fail(i + 1, "word table header without any word line")
    if [w.word for w in words] != text.split():
        logger.warning("%s:%d: the timed words do not spell the 'Text:' line", source, i + 2)
    return Transcript(text=text, conf=conf, fields=fields, words=words)


def read_transcript(path: str | Path) -> Transcript:
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LRS2FormatError(f"{path}:0: cannot read transcript ({type(exc).__name__}: {exc})") from None
    return parse_transcript(content, str(path))


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split list: the clip id and, in test.txt, the extra flag field."""

    id: str
    flag: str | None = None


def media_root(root: str | Path) -> Path:
    """The ``mvlrs_v1`` directory, given either it or the directory that holds it."""
    root = Path(root)
    if (root / "mvlrs_v1").is_dir():
        return root / "mvlrs_v1"
    if (root / "main").is_dir() or (root / "pretrain").is_dir():
        return root
    raise FileNotFoundError(f"{root} holds no LRS2 data (expected {root / 'mvlrs_v1'}/main or .../pretrain)")


def split_file(root: str | Path, split: str) -> Path:
    """Where ``<split>.txt`` is: beside ``mvlrs_v1`` (as distributed) or inside it."""
    if split not in SPLITS:
        raise ValueError(f"unknown LRS2 split {split!r}; expected one of {', '.join(SPLITS)}")
    media = media_root(root)
    for candidate in (media.parent / f"{split}.txt", media / f"{split}.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {split}.txt beside or inside {media}")


def read_split(root: str | Path, split: str) -> list[SplitEntry]:
    """The entries of a split list; a line with a malformed id or too many fields raises, naming the
    file and line."""
    path = split_file(root, split)
    entries = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2:
            raise LRS2FormatError(f"{path}:{lineno}: expected '<programme>/<clip> [FLAG]', got {line!r}")
        clip_id = parts[0]
        segments = clip_id.split("/")
        if len(segments) != 2 or not all(segments) or ".." in segments:
            raise LRS2FormatError(f"{path}:{lineno}: clip id must look like '<programme>/<clip>', got {clip_id!r}")
        if clip_id in seen:  # harmless; keep the first listing
            logger.warning("%s:%d: clip %r listed again; ignoring the repeat", path, lineno, clip_id)
            continue
        seen.add(clip_id)
        entries.append(SplitEntry(clip_id, parts[1] if len(parts) == 2 else None))
    return entries


def clip_path(root: str | Path, split: str, clip_id: str, suffix: str = ".mp4") -> Path:
    """The file of a clip: pretrain clips live under ``pretrain/``, the others under ``main/``."""
    folder = "pretrain" if split == "pretrain" else "main"
    return media_root(root) / folder / f"{clip_id}{suffix}"


@dataclass
class LRS2Config:
    """How utterances are read and preprocessed (stored with AVSR exports, so keep it plain data)."""

    root: str = "data/corpora/speech"
    fps: float = 25.0
    sample_rate: int = 16000
    # Mouth box (left, top, right, bottom) in pixels of the 160x160 face-tracked frames; used when a
    # clip has no landmark file. Its size is also the side of landmark-centred boxes.
    mouth_box: tuple[int, int, int, int] = (32, 64, 128, 160)
    # Per-clip landmark files <landmarks_dir>/<programme>/<clip>.npy holding (T, K, 2) (x, y) points in
    # pixel indices; K = 68 means the iBUG layout (mouth = points 48..67), else all K are mouth points.
    landmarks_dir: str | None = None
    landmark_smooth: int = 12  # moving-average window (frames) over mouth centres
    resize: int = 96
    crop: int = 88
    mean: float = 0.421
    std: float = 0.165
    hflip_prob: float = 0.5  # training only
    decode_threads: int = 1
    length_cache: str | None = None  # JSON file caching frame counts per split (probing is slow on LRS2)
    # Longest utterance read, in seconds of video the file holds (not what its header declares); a longer
    # one is skipped and counted like undecodable media rather than cut, since cutting it would leave
    # words of the transcript without their audio and video.
    max_seconds: float = 60.0

    def preprocess(self) -> dict[str, Any]:
        """The preprocessing an export must carry so inference crops and normalises identically."""
        keys = ("fps", "sample_rate", "mouth_box", "landmark_smooth", "resize", "crop", "mean", "std")
        return {k: (list(getattr(self, k)) if isinstance(getattr(self, k), tuple) else getattr(self, k)) for k in keys}


def mouth_centres(points: np.ndarray, num_frames: int, smooth: int) -> np.ndarray:
    """Mouth centre per frame (num_frames, 2) from landmarks (T, K, 2): the mean of the mouth points,
    smoothed by a centred moving average; frames without landmarks repeat the nearest ones."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] == 0:
        raise ValueError(f"landmarks must be (T, K, 2), got {pts.shape}")
    if pts.shape[1] == 68:
        pts = pts[:, 48:68]
    centres = pts.mean(axis=1)  # (T, 2)
    if centres.shape[0] < num_frames:
        centres = np.concatenate([centres, np.repeat(centres[-1:], num_frames - centres.shape[0], 0)])
    centres = centres[:num_frames]
    if smooth > 1:
        pad = smooth // 2
        padded = np.pad(centres, ((pad, smooth - 1 - pad), (0, 0)), mode="edge")
        kernel = np.ones(smooth) / smooth
        centres = np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(2)], axis=1)
    return centres


def crop_boxes(video: torch.Tensor, centres: np.ndarray, side: int) -> torch.Tensor:
    """Square ``side`` crops centred on ``centres`` (T, 2) of video (T, C, H, W); zero outside the frame.
    Centres are pixel indices (x = column, y = row), as landmark detectors report them."""
    T = video.shape[0]
    pad = side
    padded = torch.nn.functional.pad(video, (pad, pad, pad, pad))
    out = torch.empty(T, video.shape[1], side, side, dtype=video.dtype)
    for t in range(T):
        x0 = int(np.floor(centres[t, 0] - (side - 1) / 2 + 0.5)) + pad
        y0 = int(np.floor(centres[t, 1] - (side - 1) / 2 + 0.5)) + pad
        x0 = min(max(x0, 0), padded.shape[-1] - side)
        y0 = min(max(y0, 0), padded.shape[-2] - side)
        out[t] = padded[t, :, y0 : y0 + side, x0 : x0 + side]
    return out


def fixed_mouth_box(frames: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """RGB uint8 frames (T, 3, H, W) -> the grayscale ``box`` (left, top, right, bottom) of every frame."""
    left, top, right, bottom = box
    return TF.crop(TF.rgb_to_grayscale(frames), top, left, bottom - top, right - left)


class MouthTransform:
    """Grayscale uint8 mouth crops (T, 1, h, w) -> float32 (T, 1, crop, crop): resize, crop (random in
    training, central otherwise), optional flip, normalise. One set of random parameters per clip."""

    def __init__(self, cfg: LRS2Config, train: bool) -> None:
        steps: list[Any] = [v2.Resize((cfg.resize, cfg.resize), antialias=True)]
        if train:
            steps.append(v2.RandomCrop(cfg.crop))
            if cfg.hflip_prob > 0:
                steps.append(v2.RandomHorizontalFlip(cfg.hflip_prob))
        else:
            steps.append(v2.CenterCrop(cfg.crop))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([cfg.mean], [cfg.std])]
        self.transform = v2.Compose(steps)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        # A plain (T, C, H, W) tensor is treated as one image batch: every frame gets the same crop.
        return self.transform(video)


class LRS2Dataset(Dataset):
    """Utterances of one LRS2 split as dicts: ``video`` float32 (T, 1, 88, 88), ``audio`` float32 (S,),
    ``text``, ``id``, ``video_length``, ``audio_length`` (S = T * sample_rate / fps, rounded).

    ``audio_transform(audio, key)`` (e.g. :class:`data.noise.AddNoise`) runs on the waveform with the
    clip id as key. ``load_video`` / ``load_audio`` = False skip decoding a modality (its tensor is then
    absent from the item; the lengths are still there). A clip that cannot be decoded, that has no audio
    stream while ``load_audio`` is set, or whose video is longer than ``cfg.max_seconds`` comes back as an
    :class:`~data.collate.ItemFailure`, which :func:`collate_lrs2` drops and lists. T is the number of
    frames the file holds at ``cfg.fps`` (its declared duration is not trusted).
    """

    def __init__(
        self,
        cfg: LRS2Config,
        split: str,
        train: bool | None = None,
        audio_transform: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
        load_video: bool = True,
        load_audio: bool = True,
    ) -> None:
        self.cfg = cfg
        self.split = split
        self.train = split in ("pretrain", "train") if train is None else train
        self.entries = read_split(cfg.root, split)
        self.audio_transform = audio_transform
        self.load_video = load_video
        self.load_audio = load_audio
        self.video_transform = MouthTransform(cfg, self.train)
        self._texts: dict[str, str] = {}
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def media_path(self, index: int) -> Path:
        return clip_path(self.cfg.root, self.split, self.entries[index].id)

    def transcript(self, index: int) -> Transcript:
        return read_transcript(clip_path(self.cfg.root, self.split, self.entries[index].id, ".txt"))

    def texts(self) -> list[str]:
        """Every transcript of the split (read and checked once), in split order."""
        return [self.text(i) for i in range(len(self))]

    def text(self, index: int) -> str:
        clip_id = self.entries[index].id
        if clip_id not in self._texts:
            self._texts[clip_id] = self.transcript(index).text
        return self._texts[clip_id]

    def lengths(self) -> list[int]:
        """Frames per utterance (for batching by a frame budget), probed from the containers once and
        cached in ``cfg.length_cache`` when set. These are declared durations (reading every file would be
        slow), capped at ``cfg.max_seconds``; the items themselves follow the content."""
        if self._lengths is not None:
            return self._lengths
        cache: dict[str, Any] = {}
        cache_path = Path(self.cfg.length_cache) if self.cfg.length_cache else None
        if cache_path is not None and cache_path.is_file():
            cache = json.loads(cache_path.read_text())
        key = f"{Path(self.cfg.root).resolve()}|{self.split}|{self.cfg.fps}"
        known: dict[str, int] = cache.get(key, {})
        lengths = []
        missing = [e.id for e in self.entries if e.id not in known]
        for clip_id in tqdm(missing, desc=f"probing {self.split}", unit="clip", disable=len(missing) < 500):
            try:
                info = probe(clip_path(self.cfg.root, self.split, clip_id))
                known[clip_id] = max(1, round(info.duration * self.cfg.fps))
            except MediaError as exc:
                logger.warning("cannot probe %s: %s", clip_id, exc)
                known[clip_id] = 1
        longest = self._max_frames()
        lengths = [min(known[e.id], longest) for e in self.entries]
        if cache_path is not None and missing:
            cache[key] = known
            atomic_write_json(cache_path, cache)
        self._lengths = lengths
        return lengths

    def _max_frames(self) -> int:
        return max(1, round(self.cfg.max_seconds * self.cfg.fps))

    def _landmarks(self, clip_id: str) -> np.ndarray | None:
        if not self.cfg.landmarks_dir:
            return None
        path = Path(self.cfg.landmarks_dir) / f"{clip_id}.npy"
        return np.load(path) if path.is_file() else None

    def mouth_rois(self, frames: torch.Tensor, clip_id: str) -> torch.Tensor:
        """RGB uint8 frames (T, 3, H, W) -> grayscale mouth crops uint8 (T, 1, side, side)."""
        points = self._landmarks(clip_id)
        if points is None:
            return fixed_mouth_box(frames, self.cfg.mouth_box)
        gray = TF.rgb_to_grayscale(frames)  # (T, 1, H, W)
        left, _, right, _ = self.cfg.mouth_box
        side = right - left
        centres = mouth_centres(points, gray.shape[0], self.cfg.landmark_smooth)
        return crop_boxes(gray, centres, side)

    def __getitem__(self, index: int) -> dict[str, Any] | ItemFailure:
        entry = self.entries[index]
        path = self.media_path(index)
        item: dict[str, Any] = {"id": entry.id, "text": self.text(index)}
        cfg = self.cfg
        try:
            with MediaReader(path, threads=cfg.decode_threads) as reader:
                if self.load_audio and not reader.info.has_audio:  # never train on made-up silence
                    raise MediaError(f"no audio stream (audio was requested): {path}")
                # Sized by the frames the file holds, never by its declared duration (a header can claim
                # an hour for two seconds of data), and at most max_seconds.
                seconds = reader.video_seconds(limit=cfg.max_seconds)
                num_frames = max(1, round(seconds * cfg.fps))
                if num_frames > self._max_frames():
                    raise MediaError(
                        f"utterance longer than max_seconds={cfg.max_seconds:g} (LRS2Config.max_seconds): {path}"
                    )
                num_samples = round(num_frames * cfg.sample_rate / cfg.fps)
                if self.load_video:
                    frames = reader.read_video(0.0, num_frames, cfg.fps)  # (T, 3, H, W) uint8
                    item["video"] = self.video_transform(self.mouth_rois(frames, entry.id))  # (T, 1, 88, 88)
                if self.load_audio:
                    item["audio"] = reader.read_audio(0.0, num_samples, cfg.sample_rate)  # (S,)
        except MediaError as exc:
            logger.warning("skipping %s: %s", entry.id, exc)
            return ItemFailure(str(path), str(exc), index)
        if self.load_audio and self.audio_transform is not None:
            item["audio"] = self.audio_transform(item["audio"], entry.id)
        item["video_length"] = num_frames
        item["audio_length"] = num_samples
        return item


def pad_stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack along a new batch axis, zero-padding the first axis to the longest."""
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out


def collate_lrs2(items: Sequence[dict[str, Any] | ItemFailure]) -> dict[str, Any]:
    """Pad utterances into a batch: ``video`` (B, T, 1, 88, 88), ``video_lengths`` (B,), ``audio`` (B, S),
    ``audio_lengths`` (B,), ``text`` list[str], ``ids`` list[str], ``failures`` list[(path, reason)].
    ``video``/``audio`` are absent when the dataset did not load that modality."""
    good = [x for x in items if not isinstance(x, ItemFailure)]
    batch: dict[str, Any] = {
        "text": [x["text"] for x in good],
        "ids": [x["id"] for x in good],
        "failures": [(x.path, x.reason) for x in items if isinstance(x, ItemFailure)],
    }
    if not good:
        return batch
    batch["video_lengths"] = torch.tensor([x["video_length"] for x in good], dtype=torch.int64)
    batch["audio_lengths"] = torch.tensor([x["audio_length"] for x in good], dtype=torch.int64)
    if "video" in good[0]:
        batch["video"] = pad_stack([x["video"] for x in good])  # (B, T, 1, 88, 88)
    if "audio" in good[0]:
        batch["audio"] = pad_stack([x["audio"] for x in good])  # (B, S)
    return batch
