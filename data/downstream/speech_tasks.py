"""Downstream tasks built from a held-out synthetic speech corpus (:mod:`data.synth.speech`).

The corpus is generated on first use under ``ROOT/speech-<speakers>x<utterances>-s<seed>/corpus`` with
a seed the AVSR demo never trains on (it uses 0). Every speaker is a "training" speaker there, so every
utterance has a pretrain transcript with word timings. Utterances are split 60/20/20 within every
speaker, in a seeded order that spreads rare words over all splits (:func:`split_utterances`), and
all four tasks use that split, so no recording is in two splits:

- ``speech/lrw``: word-level lip reading in LRW's layout, 29-frame clips (1.16 s at 25 fps) centred on
  a word (kept inside the utterance) with their sound, full face frames, read by :func:`read_lrw`;
- ``speech/kws``: keyword spotting in Speech Commands' layout, 1 s 16 kHz mono wavs centred on the same
  words, read by :func:`read_speech_commands`;
- ``speech/speaker``: speaker identification on whole utterances;
- ``speech/frames``: the word spoken in each 40 ms frame of an utterance, or ``<sil>``.

The two word layouts are cut once into ``.../tasks-v<VERSION>-max<max_per_word>/`` (named by every
setting that decides its files; each file is written atomically and the marker ``tasks.json`` last, so
an interrupted run resumes) and reused. GRID sentences say a command, colour, preposition or adverb
(4 choices each) far more often than one of 25 letters, so at most ``max_per_word`` occurrences of a
word are cut (60/20/20 over the splits): the classes stay balanced, as in LRW, and the time goes to
the rare words. LRW's reader needs every word in every split, so a word missing from a split is left
out of the LRW layout (not out of Speech Commands).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import wave
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.downstream.lrw import read_lrw
from data.downstream.speech_commands import read_speech_commands
from data.downstream.task import Example, Task, TaskError, class_index
from data.files import atomic_path, atomic_write_json, atomic_write_text
from data.lrs2 import LRS2FormatError, WordTiming, clip_path, read_split, read_transcript
from data.media import MediaReader
from data.synth import speech
from data.synth.mediawriter import write_mp4

logger = logging.getLogger(__name__)

VERSION = 1  # bump when the derived layouts change; a new version is written beside the old one
DEFAULT_SEED = 2000  # the AVSR demo's corpus uses the generator's default seed, 0
MARKER = "tasks.json"
SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
FPS = speech.FPS
SAMPLE_RATE = speech.SAMPLE_RATE
SAMPLES_PER_FRAME = round(SAMPLE_RATE / FPS)
WORD_FRAMES = 29  # LRW: 1.16 s at 25 fps
KWS_SAMPLES = SAMPLE_RATE  # Speech Commands: 1 s
FRAME_HOP = 0.04
SILENCE = "<sil>"
VOCABULARY = tuple(w for slot in speech.GRID_SLOTS for w in slot)  # the 51 GRID words


@dataclass(frozen=True)
class Utterance:
    """One recording: its LRS2 id ``<speaker>/<clip>``, speaker, timed words and split."""

    id: str
    speaker: str
    words: tuple[WordTiming, ...]
    split: str


def split_counts(n: int) -> dict[str, int]:
    """60/20/20 of ``n`` items, rounding val and test half up, so 3 items give one to each split."""
    val = test = int(n * FRACTIONS["val"] + 0.5)
    return {"train": n - val - test, "val": val, "test": test}


def split_utterances(words: dict[str, tuple[str, ...]], seed: int) -> dict[str, str]:
    """Split utterances (id ``<speaker>/<clip>`` -> its words) 60/20/20 within every speaker.

    Utterances are taken in a seeded order; each goes, among the splits its speaker still has room in,
    to the one that most lacks the utterance's rarest word. A GRID letter is one of 25, so a plain
    permutation leaves some letters out of val or test; this way every word reaches every split in
    proportion, while each speaker keeps exactly :func:`split_counts` of its utterances per split.
    """
    total = Counter(w for ws in words.values() for w in ws)
    room = {spk: split_counts(n) for spk, n in Counter(uid.split("/")[0] for uid in words).items()}
    have: dict[str, Counter[str]] = defaultdict(Counter)
    ids = sorted(words)
    out = {}
    for i in np.random.default_rng([seed, 3]).permutation(len(ids)):
        uid = ids[i]
        left = room[uid.split("/")[0]]
        rare = min(words[uid], key=lambda w: (total[w], w))
        split = max(
            (s for s in SPLITS if left[s] > 0),
            key=lambda s: (FRACTIONS[s] * total[rare] - have[rare][s], left[s]),
        )
        left[split] -= 1
        have[rare][split] += 1
        out[uid] = split
    return out


def read_utterances(corpus: Path, seed: int) -> list[Utterance]:
    """The corpus's utterances with their pretrain word timings and split (:func:`split_utterances`),
    in id order."""
    timed: dict[str, tuple[WordTiming, ...]] = {}
    for entry in read_split(corpus, "pretrain"):
        path = clip_path(corpus, "pretrain", entry.id, ".txt")
        try:
            words = read_transcript(path).words
        except LRS2FormatError as exc:
            raise TaskError(str(exc)) from None
        if not words:
            raise TaskError(f"{path}: no word timings (expected a pretrain transcript)")
        for w in words:
            class_index(VOCABULARY, w.word, str(path))
        timed[entry.id] = tuple(words)
    splits = split_utterances({uid: tuple(w.word for w in ws) for uid, ws in timed.items()}, seed)
    return [Utterance(uid, uid.split("/")[0], timed[uid], splits[uid]) for uid in sorted(timed)]


def word_window(centre: float, num_frames: int) -> int:
    """First frame of the ``WORD_FRAMES`` frames centred on ``centre`` seconds, inside the utterance."""
    first = round(centre * FPS - WORD_FRAMES / 2)
    return max(0, min(first, num_frames - WORD_FRAMES))


def kws_window(centre: float, num_samples: int) -> int:
    """First sample of the ``KWS_SAMPLES`` samples centred on ``centre`` seconds, inside the utterance."""
    first = round(centre * SAMPLE_RATE) - KWS_SAMPLES // 2
    return max(0, min(first, num_samples - KWS_SAMPLES))


def frame_labels(words: tuple[WordTiming, ...], num_frames: int, hop: float = FRAME_HOP) -> tuple[int, ...]:
    """Per frame ``[k * hop, (k + 1) * hop)``: 1 + the vocabulary index of the word whose span
    ``[start, end)`` holds the frame's centre, or 0 (``<sil>``)."""
    centres = (np.arange(num_frames) + 0.5) * hop
    labels = np.zeros(num_frames, dtype=np.int64)
    for w in words:
        inside = (centres >= w.start - 1e-9) & (centres < w.end - 1e-9)
        labels[inside] = 1 + VOCABULARY.index(w.word)
    return tuple(int(x) for x in labels)


@dataclass(frozen=True)
class _Cut:
    """One word occurrence to write: its centre and duration in seconds, and its output files."""

    word: str
    centre: float
    duration: float
    wav: str
    lrw: str | None  # None: the word is not in the LRW layout


@dataclass(frozen=True)
class _Job:
    id: str
    source: str
    cuts: tuple[_Cut, ...]


def _take(x: np.ndarray, first: int, length: int) -> np.ndarray:
    """``x[first:first + length]``, padded (last frame held, audio with silence) if the source is shorter."""
    part = x[first : first + length]
    if part.shape[0] < length:
        pad = [(0, length - part.shape[0])] + [(0, 0)] * (x.ndim - 1)
        part = np.pad(part, pad, mode="edge" if x.ndim > 1 else "constant")
    return part


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM, as Speech Commands ships; full scale is 32768, as FFmpeg decodes it."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768), -32768, 32767).astype("<i2")
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def _missing(cut: _Cut) -> list[Path]:
    """The files of ``cut`` not written yet (each is renamed into place complete, so one that exists is)."""
    files = [Path(cut.wav)]
    if cut.lrw is not None:
        files += [Path(cut.lrw), Path(cut.lrw).with_suffix(".txt")]
    return [p for p in files if not p.exists()]


def _cut_utterance(job: _Job) -> tuple[str, int]:
    """Write the job's word clips (the files not there yet); returns the utterance id and its frame count."""
    with MediaReader(job.source) as reader:
        num_frames = round(reader.video_seconds() * FPS)
        todo = {c: _missing(c) for c in job.cuts}
        if not any(todo.values()):
            return job.id, num_frames
        decoded = reader.read_video(0.0, num_frames, FPS)  # (T, C, H, W)
        video = np.ascontiguousarray(decoded.permute(0, 2, 3, 1).numpy())  # (T, H, W, C), as write_mp4 takes it
        audio = reader.read_audio(0.0, num_frames * SAMPLES_PER_FRAME, SAMPLE_RATE)
    if audio is None:
        raise TaskError(f"{job.source}: no audio stream")
    samples = audio.numpy()
    for c, missing in todo.items():
        for path in missing:
            if path.suffix == ".wav":
                write_wav(path, _take(samples, kws_window(c.centre, samples.shape[0]), KWS_SAMPLES), SAMPLE_RATE)
            elif path.suffix == ".txt":
                atomic_write_text(path, f"Text: {c.word}\nDuration: {c.duration:.2f} seconds\n")
            else:
                first = word_window(c.centre, num_frames)
                frames = _take(video, first, WORD_FRAMES)
                sound = _take(samples, first * SAMPLES_PER_FRAME, WORD_FRAMES * SAMPLES_PER_FRAME)
                write_mp4(path, frames, FPS, sound, SAMPLE_RATE, crf=20)
    return job.id, num_frames


def _init_worker() -> None:
    torch.set_num_threads(1)


def plan_cuts(
    utterances: list[Utterance], corpus: Path, out: Path, max_per_word: int | None, seed: int
) -> tuple[list[_Job], dict[str, list[str]], list[str]]:
    """Which occurrences to cut and where they go: jobs per utterance, the Speech Commands list lines
    per split, and the words of the LRW layout."""
    occurrences: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)  # (word, split) -> (id, pos)
    for u in utterances:
        for pos, w in enumerate(u.words):
            occurrences[(w.word, u.split)].append((u.id, pos))
    rng = np.random.default_rng([seed, 4])
    kept: set[tuple[str, int]] = set()
    for key in sorted(occurrences):
        found = occurrences[key]
        cap = len(found) if max_per_word is None else split_counts(max_per_word)[key[1]]
        kept.update(found[i] for i in sorted(rng.permutation(len(found))[:cap]))
    # Every split of a word keeps at least one occurrence (max_per_word >= 3).
    lrw_words = [w for w in VOCABULARY if all((w, s) in occurrences for s in SPLITS)]

    numbers: Counter[tuple[str, ...]] = Counter()
    lists: dict[str, list[str]] = {s: [] for s in SPLITS}
    jobs = []
    for u in utterances:
        cuts = []
        for pos, w in enumerate(u.words):
            if (u.id, pos) not in kept:
                continue
            n_sc = numbers[("sc", w.word, u.speaker)]
            numbers[("sc", w.word, u.speaker)] += 1
            rel = f"{w.word.lower()}/{u.speaker}_nohash_{n_sc}.wav"
            lists[u.split].append(rel)
            lrw = None
            if w.word in lrw_words:
                numbers[("lrw", w.word, u.split)] += 1
                lrw = str(out / "lrw" / w.word / u.split / f"{w.word}_{numbers[('lrw', w.word, u.split)]:05d}.mp4")
            centre = (w.start + w.end) / 2
            cuts.append(_Cut(w.word, centre, w.end - w.start, str(out / "speech_commands" / rel), lrw))
        jobs.append(_Job(u.id, str(clip_path(corpus, "train", u.id)), tuple(cuts)))
    return jobs, lists, lrw_words


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_word_layouts(
    utterances: list[Utterance],
    corpus: Path,
    out: Path,
    *,
    max_per_word: int | None,
    seed: int,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Cut the LRW and Speech Commands layouts into ``out`` (resuming what is there) and write the
    marker last; returns the marker's content. Does nothing if the marker says it is done."""
    params = {"version": VERSION, "seed": seed, "max_per_word": max_per_word}
    marker = _read_marker(out / MARKER)
    if marker is not None and marker.get("params") == params:
        return marker
    jobs, lists, lrw_words = plan_cuts(utterances, corpus, out, max_per_word, seed)
    if not lrw_words:
        raise TaskError(f"{corpus}: no word is spoken in all three splits; generate more utterances")
    frames: dict[str, int] = {}
    bar = tqdm(total=len(jobs), desc="speech word clips", unit="utt", disable=not progress)
    if workers <= 1:
        for job in jobs:
            uid, n = _cut_utterance(job)
            frames[uid] = n
            bar.update()
    else:
        # Spawned, like the corpus's workers: torch keeps process-wide state that forking would share.
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for uid, n in pool.imap_unordered(_cut_utterance, jobs, chunksize=2):
                frames[uid] = n
                bar.update()
    bar.close()
    sc = out / "speech_commands"
    atomic_write_text(sc / "validation_list.txt", "".join(f"{line}\n" for line in sorted(lists["val"])))
    atomic_write_text(sc / "testing_list.txt", "".join(f"{line}\n" for line in sorted(lists["test"])))
    content = {
        "params": params,
        "lrw_words": lrw_words,
        "clips": {s: len(lines) for s, lines in lists.items()},
        "utterances": {u.id: {"split": u.split, "num_frames": frames[u.id]} for u in utterances},
    }
    atomic_write_json(out / MARKER, content)  # last: marks the layouts complete
    logger.info("wrote %d word clips to %s", sum(len(v) for v in lists.values()), out)
    return content


def speech_tasks(
    root: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    speakers: int = 12,
    utterances: int = 40,
    max_per_word: int | None = 30,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Task]:
    """The speech tasks by name, generating the corpus and the word layouts under ``root`` on first use.

    ``utterances`` is per speaker. ``max_per_word`` caps the cut occurrences of a word (None: all).
    With the defaults every speaker has 24/8/8 utterances, and every word 6 to 18 training clips and
    1 to 6 in val and in test (the rare ones are GRID's letters).
    """
    if max_per_word is not None and max_per_word < 3:
        raise ValueError(f"max_per_word must be at least 3 (one clip per split) or None, got {max_per_word}")
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    base = Path(root) / f"speech-{speakers}x{utterances}-s{seed}"
    cfg = speech.SpeechCorpusConfig(
        out=str(base / "corpus"),
        speakers=speakers,
        utterances=utterances,
        seed=seed,
        val_speakers=0,
        test_speakers=0,
        workers=workers,
    )
    corpus = speech.generate(cfg, progress=progress)
    utts = read_utterances(corpus, seed)
    out = base / f"tasks-v{VERSION}-max{max_per_word or 'all'}"
    marker = write_word_layouts(
        utts, corpus, out, max_per_word=max_per_word, seed=seed, workers=workers, progress=progress
    )
    info = marker["utterances"]

    lrw = read_lrw(out / "lrw")
    kws = read_speech_commands(out / "speech_commands")
    speaker_ids = sorted({u.speaker for u in utts})
    by_speaker: dict[str, list[Example]] = {s: [] for s in SPLITS}
    by_frame: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for u in utts:
        path = clip_path(corpus, "train", u.id)
        by_speaker[u.split].append(Example(speaker_ids.index(u.speaker), path=path, group=u.id))
        labels = frame_labels(u.words, info[u.id]["num_frames"])
        by_frame[u.split].append(Example(-1, path=path, group=u.id, frame_labels=labels))
    tasks = [
        dataclasses.replace(lrw, name="speech/lrw"),
        dataclasses.replace(kws, name="speech/kws"),
        Task("speech/speaker", speaker_ids, by_speaker, ("audio", "video"), source=str(corpus)),
        Task(
            "speech/frames",
            [SILENCE, *VOCABULARY],
            by_frame,
            ("audio", "video"),
            frame_hop=FRAME_HOP,
            source=str(corpus),
        ),
    ]
    return {t.name: t for t in tasks}
