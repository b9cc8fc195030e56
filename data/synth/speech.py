"""A synthetic talking-mouth speech corpus in the LRS2 layout.

``python -m data.synth.speech --out DIR --speakers N --utterances M --seed S`` writes

- ``DIR/mvlrs_v1/main/<speaker>/<clip>.mp4``: H.264 video at 25 fps (160x160 face frames) with AAC
  audio at 16 kHz, and ``<clip>.txt`` with ``Text:  WORDS`` and ``Conf:  N`` as LRS2 has them;
- ``DIR/mvlrs_v1/pretrain/<speaker>/<clip>.{mp4,txt}`` for the training speakers (the same media,
  hard-linked, with pretrain-style transcripts that add word timings), listed in ``pretrain.txt``;
- ``DIR/train.txt``, ``val.txt``, ``test.txt`` (test lines carry an ``NF`` flag after the id, as in
  LRS2); validation and test speakers never appear in training;
- optionally ``DIR/landmarks/<speaker>/<clip>.npy``: four mouth points per frame (T, 4, 2) as (x, y);
- ``DIR/speech_corpus.json`` last: the config and the speakers, marking the corpus complete.

Sentences follow the GRID grammar (command, colour, preposition, letter, digit, adverb: 51 words), so
words repeat across many different sentences; ``grammar="extended"`` adds an object noun from a list of
100 more words. Audio is espeak-ng (:mod:`data.synth.espeak`) with a voice, variant, rate, pitch and
channel per speaker; the engine reports the sample where every word and phoneme starts, so timings are
exact. The mouth follows the phonemes through visemes (:mod:`data.synth.visemes`) on a rendered face
(:mod:`data.synth.face`) with the speaker's look, head motion and lighting.

Every utterance draws its sentence, timing jitter, head motion and noise from its own seeded generator,
and an interrupted run resumes where it stopped. espeak-ng keeps internal state from one sentence to
the next (the phase of its pitch flutter), so the audio of a resumed or re-run corpus may differ from
the first run by a few samples of timing; the sentences, speakers and faces are the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchaudio
import torchaudio.functional as AF
from tqdm import tqdm

from data.cli import setup_logging
from data.files import atomic_path, atomic_write_json, atomic_write_text
from data.synth.espeak import Espeak, Voice
from data.synth.face import Appearance, random_appearance, random_motion, render
from data.synth.mediawriter import write_mp4
from data.synth.visemes import Articulation, trajectory

logger = logging.getLogger(__name__)

FPS = 25.0
SAMPLE_RATE = 16000
MARKER = "speech_corpus.json"
PARTIAL = ".speech_corpus.partial.json"

# The GRID sentence grammar (Cooke et al., 2006): one word from each slot, in this order.
COMMANDS = ["BIN", "LAY", "PLACE", "SET"]
COLOURS = ["BLUE", "GREEN", "RED", "WHITE"]
PREPOSITIONS = ["AT", "BY", "IN", "WITH"]
LETTERS = [c for c in "ABCDEFGHIJKLMNOPQRSTUVXYZ"]  # GRID leaves out W (three syllables)
DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
ADVERBS = ["AGAIN", "NOW", "PLEASE", "SOON"]
GRID_SLOTS = [COMMANDS, COLOURS, PREPOSITIONS, LETTERS, DIGITS, ADVERBS]

# More words for the extended grammar: an object after the colour ("PLACE RED CHAIR AT F TWO NOW").
NOUNS = """APPLE BALL BASKET BELL BIRD BOAT BOOK BOTTLE BOWL BOX BREAD BRICK BRUSH BUCKET BUTTON CAKE CAMERA
CANDLE CAP CAR CARD CARPET CHAIR CHEESE CLOCK CLOUD COAT COIN CUP DESK DOOR DRUM EGG ENGINE FEATHER FENCE FISH
FLAG FLOWER FORK GARDEN GLASS GLOVE HAMMER HAT HORSE HOUSE JACKET JAR KETTLE KEY KITE KNIFE LADDER LAMP LEAF
LEMON LETTER MAP MIRROR MONKEY MOON NEEDLE NEST ORANGE PAPER PENCIL PIANO PILLOW PLATE POCKET RABBIT RADIO RING
ROCKET ROPE SHEEP SHELL SHIP SHOE SOAP SPOON STAMP STAR STONE STRING TABLE TICKET TOWEL TOY TRAIN TREE TRUMPET
UMBRELLA VIOLIN WAGON WATCH WHEEL WINDOW""".split()

# espeak-ng voices with English phonology (mbrola voices are left out: they need extra packages).
VOICES = ["en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]


@dataclass
class SpeechCorpusConfig:
    """What to generate. Validation and test speakers are the last ones drawn, never used in training."""

    out: str = "data/corpora/speech"
    speakers: int = 24  # the default corpus of train_avsr.py: 20 training speakers
    utterances: int = 40  # per speaker
    seed: int = 0
    val_speakers: int = 2
    test_speakers: int = 2
    grammar: Literal["grid", "extended"] = "grid"
    workers: int = 2
    size: int = 160  # frame side in pixels
    landmarks: bool = False  # also write per-clip mouth points
    pretrain: bool = True  # hard-link training clips into mvlrs_v1/pretrain with word timings
    lead: tuple[float, float] = (0.15, 0.35)  # silence before speech, seconds (uniform range)
    trail: tuple[float, float] = (0.15, 0.35)  # silence after speech

    def __post_init__(self) -> None:
        if self.speakers - self.val_speakers - self.test_speakers < 1:
            raise ValueError(
                f"speakers={self.speakers} leaves no training speaker after {self.val_speakers} val and "
                f"{self.test_speakers} test speakers"
            )
        if self.utterances < 1 or self.size % 2:
            raise ValueError("utterances must be >= 1 and size even (H.264 4:2:0)")


@dataclass
class Speaker:
    """One speaker's voice, look, manner of articulation, recording channel and split."""

    id: str
    split: str
    voice: Voice
    look: Appearance
    style: Articulation
    lowpass_hz: float
    noise_db: float  # noise floor relative to the speech level (negative dB)


@dataclass
class Job:
    """One utterance to write (picklable for worker processes)."""

    root: str
    speaker: Speaker
    clip: str
    words: list[str]
    seed: int
    conf: int
    size: int
    landmarks: bool
    pretrain: bool
    lead: tuple[float, float]
    trail: tuple[float, float]


def spoken(word: str) -> str:
    """The espeak-ng text for a transcript word: letters are said by name (A would be read as "uh")."""
    if word == "A":
        return "[['eI]]"
    return word.lower()


def draw_speakers(cfg: SpeechCorpusConfig) -> list[Speaker]:
    """Speakers from the seed: distinct voice/variant pairs while they last, LRS2-like numeric ids."""
    rng = np.random.default_rng([cfg.seed, 1])
    pairs = [(v, var) for v in VOICES for var in VARIANTS]
    order = rng.permutation(len(pairs))
    n_train = cfg.speakers - cfg.val_speakers - cfg.test_speakers
    ids: set[str] = set()
    speakers = []
    for i in range(cfg.speakers):
        name, variant = pairs[order[i % len(pairs)]]
        split = "train" if i < n_train else "val" if i < n_train + cfg.val_speakers else "test"
        sid = str(int(rng.integers(10**18, 10**19 - 1, dtype=np.uint64)))
        while sid in ids:
            sid = str(int(rng.integers(10**18, 10**19 - 1, dtype=np.uint64)))
        ids.add(sid)
        voice = Voice(
            name=name,
            variant=variant,
            rate=int(rng.integers(135, 190)),
            pitch=int(rng.integers(25, 75)),
            pitch_range=int(rng.integers(30, 85)),
            word_gap=int(rng.integers(0, 4)),
        )
        style = Articulation(
            open_gain=float(rng.uniform(0.8, 1.2)),
            width_gain=float(rng.uniform(0.8, 1.2)),
            round_gain=float(rng.uniform(0.8, 1.2)),
            spread=float(rng.uniform(0.8, 1.3)),
        )
        speakers.append(
            Speaker(
                id=sid,
                split=split,
                voice=voice,
                look=random_appearance(rng),
                style=style,
                lowpass_hz=float(rng.uniform(3500, 7800)),
                noise_db=float(rng.uniform(-50, -35)),
            )
        )
    return speakers


def draw_sentence(rng: np.random.Generator, grammar: str) -> list[str]:
    words = [slot[rng.integers(len(slot))] for slot in GRID_SLOTS]
    if grammar == "extended":
        words.insert(2, NOUNS[rng.integers(len(NOUNS))])
    return words


def main_transcript(words: list[str], conf: int) -> str:
    """LRS2 main-split transcript: two spaces after each colon, upper case."""
    return f"Text:  {' '.join(words)}\nConf:  {conf}\n"


def pretrain_transcript(words: list[str], conf: int, times: list[tuple[float, float]]) -> str:
    """LRS2 pretrain transcript: the main lines, a blank line, a header and one timed line per word
    (the last column is the active-speaker score; synthetic speech is always on screen)."""
    rows = [f"{w} {s:.2f} {e:.2f} 10.0" for w, (s, e) in zip(words, times)]
    return main_transcript(words, conf) + "\nWORD START END ASDSCORE\n" + "\n".join(rows) + "\n"


def _outputs(job: Job) -> list[Path]:
    root = Path(job.root) / "mvlrs_v1"
    rel = Path(job.speaker.id) / job.clip
    paths = [root / "main" / rel.with_suffix(".mp4"), root / "main" / rel.with_suffix(".txt")]
    if job.pretrain:
        paths += [root / "pretrain" / rel.with_suffix(".mp4"), root / "pretrain" / rel.with_suffix(".txt")]
    if job.landmarks:
        paths.append(Path(job.root) / "landmarks" / rel.with_suffix(".npy"))
    return paths


@functools.lru_cache(maxsize=4)
def _resampler(rate: int) -> torchaudio.transforms.Resample:
    """espeak-ng's rate (22,050 Hz) to 16 kHz; the module keeps its sinc kernel, which is costly to build."""
    return torchaudio.transforms.Resample(rate, SAMPLE_RATE)


def synthesize(job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """Audio (S,) float32 at 16 kHz, frames (T, H, W, 3) uint8, mouth points (T, 4, 2) and word times."""
    sp = job.speaker
    rng = np.random.default_rng(job.seed)
    syn = Espeak.get().synthesize([spoken(w) for w in job.words], sp.voice)
    sr = syn.sample_rate
    begin = syn.word_starts[0]
    lead = float(rng.uniform(*job.lead))
    speech = syn.end - begin  # samples at the synthesis rate
    duration = lead + speech / sr + float(rng.uniform(*job.trail))
    num_frames = int(np.ceil(duration * FPS))
    num_samples = round(num_frames * SAMPLE_RATE / FPS)  # exactly 640 per frame

    # Audio: the speech resampled to 16 kHz, levelled, through the speaker's channel, over a noise floor.
    wave = torch.from_numpy(syn.wave[begin : syn.end].astype(np.float32) / 32768.0)
    wave = _resampler(sr)(wave)
    # The library stops at the closing pause, sometimes inside the last sound's decay: fade the edges
    # (10 ms) so the clip has no click where the speech meets the silence.
    fade = min(160, wave.shape[0] // 4)
    ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, fade))
    wave[:fade] *= ramp
    wave[wave.shape[0] - fade :] *= ramp.flip(0)
    wave = AF.lowpass_biquad(wave, SAMPLE_RATE, sp.lowpass_hz)
    level = 10 ** (float(rng.uniform(-23, -17)) / 20)  # speech RMS, -20 dBFS give or take 3 dB
    wave = wave * (level / (float(wave.pow(2).mean().sqrt()) + 1e-8))
    audio = np.zeros(num_samples, np.float32)
    offset = round(lead * SAMPLE_RATE)
    n = min(wave.shape[0], num_samples - offset)
    audio[offset : offset + n] = wave[:n].numpy()
    audio += rng.normal(0.0, level * 10 ** (sp.noise_db / 20), num_samples).astype(np.float32)
    audio = np.clip(audio, -1.0, 1.0)

    # Timings in seconds of the output clip.
    def at(sample: int) -> float:
        return lead + (sample - begin) / sr

    ends = syn.word_starts[1:] + [syn.end]
    times = [(at(s), at(e)) for s, e in zip(syn.word_starts, ends)]
    phones = []
    for i, ph in enumerate(syn.phones):
        stop = syn.phones[i + 1].start if i + 1 < len(syn.phones) else len(syn.wave)
        if ph.symbol.startswith("_") or stop <= begin or ph.start >= syn.end:
            continue
        phones.append((ph.symbol, at(max(ph.start, begin)), at(min(stop, syn.end))))

    shape = trajectory(phones, num_frames, FPS, sp.style)  # (T, 5)
    frames, points = render(sp.look, shape, random_motion(rng, num_frames, FPS), size=job.size)
    return audio, frames, points, times


def make_utterance(job: Job) -> str:
    """Write one utterance's files (skipped when they all exist: a resumed run); returns the clip id."""
    clip_id = f"{job.speaker.id}/{job.clip}"
    outputs = _outputs(job)
    if all(p.exists() for p in outputs):
        return clip_id
    audio, frames, points, times = synthesize(job)
    main_mp4, main_txt = outputs[0], outputs[1]
    write_mp4(main_mp4, frames, FPS, audio, SAMPLE_RATE, preset="veryfast", crf=20)
    atomic_write_text(main_txt, main_transcript(job.words, job.conf))
    if job.pretrain:
        pre_mp4, pre_txt = outputs[2], outputs[3]
        pre_mp4.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(pre_mp4) as tmp:
            try:
                os.link(main_mp4, tmp)
            except OSError:  # a file system without hard links
                tmp.write_bytes(main_mp4.read_bytes())
        atomic_write_text(pre_txt, pretrain_transcript(job.words, job.conf, times))
    if job.landmarks:
        with atomic_path(outputs[-1]) as tmp, open(tmp, "wb") as f:
            np.save(f, points)
    return clip_id


def _init_worker() -> None:
    torch.set_num_threads(1)
    Espeak.get()


def plan(cfg: SpeechCorpusConfig) -> tuple[list[Speaker], list[Job]]:
    """Speakers and one job per utterance, all decided by the seed."""
    speakers = draw_speakers(cfg)
    jobs = []
    for si, sp in enumerate(speakers):
        for ui in range(cfg.utterances):
            rng = np.random.default_rng([cfg.seed, 2, si, ui])
            jobs.append(
                Job(
                    root=cfg.out,
                    speaker=sp,
                    clip=f"{ui + 1:05d}",
                    words=draw_sentence(rng, cfg.grammar),
                    seed=int(rng.integers(2**63)),
                    conf=int(rng.integers(3, 10)),
                    size=cfg.size,
                    landmarks=cfg.landmarks,
                    pretrain=cfg.pretrain and sp.split == "train",
                    lead=cfg.lead,
                    trail=cfg.trail,
                )
            )
    return speakers, jobs


def _identity(cfg: SpeechCorpusConfig) -> dict[str, Any]:
    """The settings that determine the files (not ``out`` or ``workers``)."""
    d = dataclasses.asdict(cfg)
    d.pop("out")
    d.pop("workers")
    return json.loads(json.dumps(d))


def generate(cfg: SpeechCorpusConfig, progress: bool = True) -> Path:
    """Write the corpus under ``cfg.out`` and return that directory. Does nothing if a complete corpus
    with the same settings is there; refuses to write over one made with different settings."""
    root = Path(cfg.out)
    ident = _identity(cfg)
    marker, partial = root / MARKER, root / PARTIAL
    for path in (marker, partial):
        if path.exists():
            found = json.loads(path.read_text()).get("config")
            if found != ident:
                raise FileExistsError(
                    f"{path} holds a corpus made with different settings ({found}); choose another --out "
                    "or delete the directory"
                )
    if marker.exists():
        logger.info("speech corpus already complete in %s", root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(partial, {"config": ident})
    started = time.perf_counter()
    speakers, jobs = plan(cfg)
    bar = tqdm(total=len(jobs), desc="speech corpus", unit="utt", disable=not progress)
    if cfg.workers <= 1:
        for job in jobs:
            make_utterance(job)
            bar.update()
    else:
        # Spawned workers: espeak-ng and torch each keep process-wide state that forking would share.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(cfg.workers, initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(make_utterance, jobs, chunksize=4):
                bar.update()
    bar.close()

    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for job in jobs:  # plan order: speakers, then clips
        by_split[job.speaker.split].append(f"{job.speaker.id}/{job.clip}")
    atomic_write_text(root / "train.txt", "".join(f"{i}\n" for i in by_split["train"]))
    atomic_write_text(root / "val.txt", "".join(f"{i}\n" for i in by_split["val"]))
    atomic_write_text(root / "test.txt", "".join(f"{i} NF\n" for i in by_split["test"]))
    pretrain = by_split["train"] if cfg.pretrain else []
    atomic_write_text(root / "pretrain.txt", "".join(f"{i}\n" for i in pretrain))
    elapsed = time.perf_counter() - started
    summary = {
        "config": ident,
        "utterances": {k: len(v) for k, v in by_split.items()},
        "speakers": [
            {
                "id": sp.id,
                "split": sp.split,
                "voice": dataclasses.asdict(sp.voice),
                "style": dataclasses.asdict(sp.style),
                "look": dataclasses.asdict(sp.look),
                "lowpass_hz": sp.lowpass_hz,
                "noise_db": sp.noise_db,
            }
            for sp in speakers
        ],
        "vocabulary": sorted({w for job in jobs for w in job.words}),
        "seconds": round(elapsed, 1),
        "workers": cfg.workers,
    }
    atomic_write_json(marker, summary)  # last: marks the corpus complete
    partial.unlink(missing_ok=True)
    logger.info("wrote %d utterances to %s in %.1f s", len(jobs), root, elapsed)
    return root


def main(argv: list[str] | None = None) -> None:
    defaults = SpeechCorpusConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=defaults.out, help="output directory (LRS2 layout inside)")
    p.add_argument("--speakers", type=int, default=defaults.speakers)
    p.add_argument("--utterances", type=int, default=defaults.utterances, help="per speaker")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--val-speakers", type=int, default=defaults.val_speakers)
    p.add_argument("--test-speakers", type=int, default=defaults.test_speakers)
    p.add_argument("--grammar", choices=["grid", "extended"], default=defaults.grammar)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--size", type=int, default=defaults.size)
    p.add_argument("--landmarks", action="store_true", help="write per-clip mouth points under landmarks/")
    p.add_argument("--no-pretrain", action="store_true", help="do not fill mvlrs_v1/pretrain")
    args = p.parse_args(argv)
    setup_logging()
    cfg = SpeechCorpusConfig(
        out=args.out,
        speakers=args.speakers,
        utterances=args.utterances,
        seed=args.seed,
        val_speakers=args.val_speakers,
        test_speakers=args.test_speakers,
        grammar=args.grammar,
        workers=args.workers,
        size=args.size,
        landmarks=args.landmarks,
        pretrain=not args.no_pretrain,
    )
    generate(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
