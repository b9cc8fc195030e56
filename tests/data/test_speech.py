"""The synthetic speech corpus: espeak-ng timings, visemes, rendering, and the files in LRS2 layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.lrs2 import read_split, read_transcript
from data.media import decode_clip, probe
from data.synth import speech
from data.synth.espeak import Espeak, Voice
from data.synth.face import MOUTH_CENTRE, Motion, random_appearance, render
from data.synth.visemes import Articulation, known_phoneme, trajectory, visemes_for
from tests.conftest import run_python

GRID_WORDS = {w for slot in speech.GRID_SLOTS for w in slot}


def frame_energy(audio: np.ndarray, per_frame: int = 640) -> np.ndarray:
    n = len(audio) // per_frame
    return np.sqrt((audio[: n * per_frame].reshape(n, per_frame).astype(np.float64) ** 2).mean(1))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, speech.SpeechCorpusConfig]:
    cfg = speech.SpeechCorpusConfig(
        out=str(tmp_path_factory.mktemp("speech")),
        speakers=4,
        utterances=3,
        val_speakers=1,
        test_speakers=1,
        workers=1,
        landmarks=True,
    )
    return speech.generate(cfg, progress=False), cfg


def test_espeak_word_and_phoneme_timings_match_the_audio():
    words = ["bin", "blue", "at", speech.spoken("A"), "two", "now"]
    syn = Espeak.get().synthesize(words, Voice("en-us", "m3", rate=160))
    starts = syn.word_starts
    assert len(starts) == len(words) and starts == sorted(starts) and starts[-1] < syn.end <= len(syn.wave)
    wave = syn.wave.astype(np.float64) / 32768
    speech_rms = np.sqrt((wave[starts[0] : syn.end] ** 2).mean())
    # Every word holds sound; the reported end is where the sound runs out.
    bounds = starts + [syn.end]
    for lo, hi in zip(bounds, bounds[1:]):
        assert np.sqrt((wave[lo:hi] ** 2).mean()) > 0.1 * speech_rms
    assert 0 <= len(wave) - syn.end < 0.05 * syn.sample_rate
    # "A" is said as its letter name, not as the article.
    names = [p.symbol for p in syn.phones]
    assert "eI" in names
    phone_starts = [p.start for p in syn.phones]
    assert phone_starts == sorted(phone_starts)


def test_every_grid_phoneme_of_every_voice_has_a_viseme():
    engine = Espeak.get()
    words = [speech.spoken(w) for w in sorted(GRID_WORDS)]
    unknown = set()
    for name in speech.VOICES:
        syn = engine.synthesize(words, Voice(name, "f2"))
        unknown |= {p.symbol for p in syn.phones if not known_phoneme(p.symbol)}
    assert not unknown


def test_visemes_are_ambiguous_where_lips_are():
    # p, b and m look alike (lips closed); f differs from them (teeth on the lip), t from d does not.
    assert visemes_for("p") == visemes_for("b") == visemes_for("m")
    assert visemes_for("t") == visemes_for("d")
    assert visemes_for("f") != visemes_for("b")
    assert visemes_for("aI2") == visemes_for("aI") and len(visemes_for("aI")) == 2  # a diphthong glides
    for consonant in ("p", "b", "m"):
        phones = [("a", 0.2, 0.4), (consonant, 0.4, 0.5), ("a", 0.5, 0.7)]
        traj = trajectory(phones, 25, 25.0)
        assert traj[11, 0] < 0.08  # closure at the consonant (t = 0.45 s)
        assert traj[7, 0] > 0.4 and traj[16, 0] > 0.4  # open vowels around it
    same = [trajectory([("a", 0.2, 0.4), (c, 0.4, 0.5), ("a", 0.5, 0.7)], 25, 25.0) for c in "pbm"]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[1], same[2])
    rest = trajectory([], 10, 25.0, Articulation())
    assert np.allclose(rest[:, 0], rest[0, 0]) and rest[0, 0] < 0.05


def test_render_moves_the_mouth_and_keeps_it_in_the_mouth_box():
    rng = np.random.default_rng(0)
    look = random_appearance(rng)
    T = 4
    zero, one = np.zeros(T, np.float32), np.ones(T, np.float32)
    still = Motion(dx=zero, dy=zero, angle=zero, scale=one, light_x=zero, light_y=zero, gain=one, blink=zero)
    shape = np.tile(np.array([0.02, 0.45, 0.15, 0.0, 0.0], np.float32), (T, 1))
    shape[2:, 0] = 1.0  # open wide in the last two frames
    frames, points = render(look, shape, still)
    assert frames.shape == (T, 160, 160, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[2], frames[3])
    diff = np.abs(frames[2].astype(int) - frames[0].astype(int)).sum(-1) > 30
    ys, xs = np.nonzero(diff)
    # Only the mouth (and the chin that drops with it) changes, around the fixed mouth point.
    assert diff.sum() > 200
    assert abs(xs.mean() - (MOUTH_CENTRE[0] + look.mouth_offset[0])) < 4
    assert 64 <= ys.min() and ys.max() < 160 and 32 <= xs.min() and xs.max() < 128
    gap_closed = points[0, 3, 1] - points[0, 2, 1]
    gap_open = points[2, 3, 1] - points[2, 2, 1]
    assert gap_open > gap_closed + 15


def test_corpus_layout_transcripts_and_splits(corpus):
    root, cfg = corpus
    summary = json.loads((root / speech.MARKER).read_text())
    assert summary["utterances"] == {"train": 6, "val": 3, "test": 3}
    train, val, test = (read_split(root, s) for s in ("train", "val", "test"))
    pretrain = read_split(root, "pretrain")
    assert [e.id for e in pretrain] == [e.id for e in train]
    assert all(e.flag == "NF" for e in test) and all(e.flag is None for e in train + val)
    speakers = {
        s: {e.id.split("/")[0] for e in entries} for s, entries in (("train", train), ("val", val), ("test", test))
    }
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["val"]
    assert len(speakers["train"]) == 2
    for entry in train + val + test:
        main = root / "mvlrs_v1" / "main" / f"{entry.id}.txt"
        text = main.read_text()
        assert text.startswith("Text:  ") and "\nConf:  " in text  # two spaces after each colon
        words = read_transcript(main).text.split()
        assert len(words) == 6 and set(words) <= GRID_WORDS and " ".join(words).isupper()
    for entry in pretrain:
        tr = read_transcript(root / "mvlrs_v1" / "pretrain" / f"{entry.id}.txt")
        duration = probe(root / "mvlrs_v1" / "pretrain" / f"{entry.id}.mp4").duration
        assert [w.word for w in tr.words] == tr.text.split()
        assert tr.words[0].start > 0.1 and tr.words[-1].end < duration


def test_media_are_lrs2_like_and_audio_matches_the_synthesis(corpus):
    root, cfg = corpus
    _, jobs = speech.plan(cfg)
    for job in jobs[:4]:
        path = root / "mvlrs_v1" / "main" / job.speaker.id / f"{job.clip}.mp4"
        info = probe(path)
        assert (info.fps, info.width, info.height, info.sample_rate, info.audio_channels) == (25.0, 160, 160, 16000, 1)
        # Re-synthesise: sentence, speaker, face and motion are seeded, but espeak-ng keeps state between
        # sentences (its pitch-flutter phase), so the audio may differ by a few samples of timing.
        audio, frames, _, times = speech.synthesize(job)
        T = frames.shape[0]
        assert round(info.duration * 25) == T and len(audio) == T * 640
        clip = decode_clip(path, 0.0, T, 25.0, 16000)
        decoded = clip.audio.numpy().astype(np.float64)
        assert np.corrcoef(frame_energy(decoded), frame_energy(audio))[0, 1] > 0.95
        assert np.abs(clip.video.permute(0, 2, 3, 1).float().numpy() - frames).mean() < 6  # H.264 at crf 20
        # Word times from the transcript bound the speech: silence before the first word.
        energy = frame_energy(decoded)
        lead = int(times[0][0] * 25) - 1
        assert energy[:lead].max() < 0.1 * energy[lead + 2 :].max()


def test_the_mouth_opens_with_the_voice(corpus):
    """Dark mouth-cavity pixels per frame rise and fall with the audio energy (an independent check
    of the face against the sound, measured on the decoded files)."""
    root, cfg = corpus
    _, jobs = speech.plan(cfg)
    correlations = []
    for job in jobs:
        path = root / "mvlrs_v1" / "main" / job.speaker.id / f"{job.clip}.mp4"
        T = round(probe(path).duration * 25)
        clip = decode_clip(path, 0.0, T, 25.0, 16000)
        v = clip.video.float().numpy()
        lum = (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2])[:, 88:140, 40:120]
        med = np.median(lum.reshape(T, -1), axis=1)
        cavity = (lum < 0.5 * med[:, None, None]).reshape(T, -1).sum(1)
        energy = frame_energy(clip.audio.numpy())
        correlations.append(np.corrcoef(cavity, energy[:T])[0, 1])
        assert cavity[:3].max() < 0.4 * cavity.max()  # the mouth is closed before speech starts
    assert np.mean(correlations) > 0.15


def test_landmarks_follow_the_mouth(corpus):
    root, cfg = corpus
    _, jobs = speech.plan(cfg)
    job = jobs[0]
    points = np.load(root / "landmarks" / job.speaker.id / f"{job.clip}.npy")
    T = round(probe(root / "mvlrs_v1" / "main" / job.speaker.id / f"{job.clip}.mp4").duration * 25)
    assert points.shape == (T, 4, 2)
    centre = points.mean(1)
    left, top, right, bottom = 32, 64, 128, 160  # the default fixed mouth box of data.lrs2
    assert (centre[:, 0] > left + 20).all() and (centre[:, 0] < right - 20).all()
    assert (centre[:, 1] > top + 20).all() and (centre[:, 1] < bottom - 20).all()


def test_generate_is_idempotent_and_refuses_other_settings(corpus):
    root, cfg = corpus
    marker = root / speech.MARKER
    stamp = marker.stat().st_mtime_ns
    some = next((root / "mvlrs_v1" / "main").rglob("*.mp4"))
    before = some.stat().st_mtime_ns
    speech.generate(cfg, progress=False)
    assert marker.stat().st_mtime_ns == stamp and some.stat().st_mtime_ns == before
    other = speech.SpeechCorpusConfig(**{**cfg.__dict__, "seed": cfg.seed + 1})
    with pytest.raises(FileExistsError, match="different settings"):
        speech.generate(other, progress=False)


def test_resume_rewrites_only_what_is_missing(tmp_path):
    cfg = speech.SpeechCorpusConfig(
        out=str(tmp_path / "c"), speakers=2, utterances=2, val_speakers=0, test_speakers=1, workers=1
    )
    root = speech.generate(cfg, progress=False)
    txt = next((root / "mvlrs_v1" / "main").rglob("00002.txt"))
    mp4 = txt.with_suffix(".mp4")
    content, frames = txt.read_text(), decode_clip(mp4, 0.0, 10, 25.0, 16000).video
    keep = next((root / "mvlrs_v1" / "main").rglob("00001.mp4"))
    kept_time = keep.stat().st_mtime_ns
    # An interrupted run: no marker, one utterance missing.
    (root / speech.MARKER).unlink()
    txt.unlink()
    mp4.unlink()
    speech.generate(cfg, progress=False)
    assert (root / speech.MARKER).exists() and txt.read_text() == content
    assert (decode_clip(mp4, 0.0, 10, 25.0, 16000).video.float() - frames.float()).abs().mean() < 1.0
    assert keep.stat().st_mtime_ns == kept_time


@pytest.mark.slow  # starts two worker processes (each imports torch)
def test_cli_with_worker_processes(tmp_path):
    out = tmp_path / "cli"
    cmd = ["-m", "data.synth.speech", "--out", str(out), "--speakers", "3", "--utterances", "1",
           "--val-speakers", "1", "--test-speakers", "1", "--workers", "2", "--seed", "3"]  # fmt: skip
    run = run_python(cmd, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (out / speech.MARKER).exists()
    assert len(list((out / "mvlrs_v1" / "main").rglob("*.mp4"))) == 3
    assert [len(read_split(out, s)) for s in ("train", "val", "test", "pretrain")] == [1, 1, 1, 1]
