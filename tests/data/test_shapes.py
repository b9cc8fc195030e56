"""The shapes corpus: deterministic, resumable, captions that name what is seen and heard, and read by
the same dataset class as any user manifest."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from data.manifest import Caption, ManifestDataset, ManifestEntry, caption_texts, collate, read_manifest
from data.media import decode_clip
from data.synth import shapes
from data.synth.shapes import (
    COLOURS,
    MOTION_WORDS,
    PATTERN_WORDS,
    PULSES,
    SHAPE_WORDS,
    SIZE_WORDS,
    SPEED_ADJ,
    SPEED_WORDS,
    TONE_WORDS,
    Scene,
    ShapeObject,
    clip_rng,
    demo_preprocess,
    generate,
    make_captions,
    render_audio,
    render_video,
    sample_scene,
)
from data.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "corpus"
    generate(out, num_train=6, num_val=4, seed=3, workers=2, progress=False)
    return out


def test_layout_and_manifests(corpus):
    assert json.loads((corpus / "corpus.json").read_text())["num_train"] == 6
    train, val = read_manifest(corpus / "train.jsonl"), read_manifest(corpus / "val.jsonl")
    assert [e.id for e in val] == [f"val_{i:06d}" for i in range(4)] and len(train) == 6
    for e in train + val:
        assert e.media.is_file() and len(e.captions) == 5
        assert all(0.0 <= c.start < c.end <= 3.2 for c in e.captions)
        assert any(label.startswith("colour:") for label in e.labels)


def test_deterministic_for_a_seed_and_independent_of_workers(corpus, tmp_path):
    again = generate(tmp_path / "again", num_train=6, num_val=4, seed=3, workers=1, progress=False)
    assert (again / "val.jsonl").read_text() == (corpus / "val.jsonl").read_text()
    assert (again / "train.jsonl").read_text() == (corpus / "train.jsonl").read_text()
    a = decode_clip(corpus / "val/000002.mp4", 0.0, 32, 10.0, 16000)
    b = decode_clip(again / "val/000002.mp4", 0.0, 32, 10.0, 16000)
    assert torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    other = [sample_scene(clip_rng(4, "val", i)) for i in range(4)]
    assert other != [sample_scene(clip_rng(3, "val", i)) for i in range(4)]


def test_idempotent_resumable_and_rebuilt_for_another_seed(corpus, tmp_path):
    mtime = (corpus / "train/000001.mp4").stat().st_mtime_ns
    generate(corpus, num_train=6, num_val=4, seed=3, progress=False)  # complete: nothing rewritten
    assert (corpus / "train/000001.mp4").stat().st_mtime_ns == mtime
    # An interrupted run (no marker, a clip missing) is finished on the next call.
    reference = decode_clip(corpus / "val/000001.mp4", 0.0, 8, 2.5, 16000)
    (corpus / "corpus.json").unlink()
    (corpus / "val/000001.mp4").unlink()
    generate(corpus, num_train=6, num_val=4, seed=3, workers=1, progress=False)
    assert (corpus / "train/000001.mp4").stat().st_mtime_ns == mtime
    assert torch.equal(decode_clip(corpus / "val/000001.mp4", 0.0, 8, 2.5, 16000).video, reference.video)
    assert shapes.is_complete(corpus, 6, 4, 3) and not (corpus / shapes.PARTIAL).exists()
    # Other counts, same seed: the clips are the same, so they are kept and the corpus grows.
    bigger = tmp_path / "bigger"
    generate(bigger, num_train=2, num_val=1, seed=3, workers=1, progress=False)
    first = (bigger / "train/000000.mp4").stat().st_mtime_ns
    generate(bigger, num_train=3, num_val=1, seed=3, workers=1, progress=False)
    assert (bigger / "train/000000.mp4").stat().st_mtime_ns == first and len(read_manifest(bigger / "train.jsonl")) == 3
    assert (bigger / "train.jsonl").read_text().splitlines()[:2] == (corpus / "train.jsonl").read_text().splitlines()[
        :2
    ]
    # Another seed: the old clips are replaced, files that are not ours are left alone.
    (bigger / "notes.txt").write_text("mine")
    generate(bigger, num_train=3, num_val=1, seed=4, workers=1, progress=False)
    assert shapes.is_complete(bigger, 3, 1, 4) and (bigger / "notes.txt").read_text() == "mine"
    assert read_manifest(bigger / "train.jsonl")[0].captions != read_manifest(corpus / "train.jsonl")[0].captions


def test_read_by_the_manifest_dataset(corpus):
    cfg = demo_preprocess()
    tok = Tokenizer(train_tokenizer(caption_texts(read_manifest(corpus / "train.jsonl")), 200, corpus / "t.model"))
    ds = ManifestDataset(corpus / "val.jsonl", cfg, tok, train=False, clips_per_video=1)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["video"].shape == (4, 8, 3, 64, 64) and batch["audio"].shape == (4, cfg.audio_samples)
    assert batch["audio_mask"].tolist() == [1.0] * 4 and batch["text_mask"].tolist() == [1.0] * 4
    assert (batch["text_lengths"] > 0).all()  # five captions per video: every positive slot filled
    assert batch["failures"] == []
    first = ds.entries[0].captions[0].text
    assert first in [tok.decode(r[:n].tolist()) for r, n in zip(batch["text_ids"][0], batch["text_lengths"][0])]


def test_val_captions_unique_and_name_every_factor():
    captions = []
    for i in range(256):
        rng = clip_rng(0, "val", i)
        scene = sample_scene(rng)
        caps = make_captions(scene, rng)
        captions += caps
        for text in caps:
            for obj in scene.objects:
                assert re.search(rf"\b{obj.colour}\b", text), (text, obj)
                for words in (SHAPE_WORDS[obj.shape], SIZE_WORDS[obj.size], MOTION_WORDS[obj.direction]):
                    assert any(w in text for w in words), (text, obj, words)
                assert any(w in text for w in SPEED_WORDS[obj.speed] + SPEED_ADJ[obj.speed]), (text, obj)
            assert any(w in text for w in TONE_WORDS[scene.tone]) and any(
                w in text for w in PATTERN_WORDS[scene.pattern]
            )
            assert " a orange" not in text and not text.startswith("a orange")
    assert len(set(captions)) >= 0.95 * len(captions)


def _one(colour="red", shape="circle", size="large", direction="right", speed="fast", x0=20.0, y0=56.0) -> Scene:
    return Scene((ShapeObject(colour, shape, size, direction, speed, x0, y0, phase=0.0),), "dark", "plain")


def _peak(x: np.ndarray, sr: int, lo: float = 100.0) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    spec[freqs < lo] = 0
    return float(freqs[spec.argmax()])


@pytest.mark.parametrize("colour", ["red", "green", "pink"])
def test_sound_pitch_is_the_colour_and_pulse_rate_is_the_speed(colour):
    for speed in ("slow", "fast"):
        audio = render_audio(_one(colour, speed=speed), np.random.default_rng(0), 3.2).astype(np.float64)
        assert abs(_peak(audio, 16000) - COLOURS[colour][1]) < 2.0
        # Envelope: rectify and low-pass, then its strongest modulation frequency.
        env = np.convolve(np.abs(audio), np.ones(160) / 160, mode="same")[::160]  # 100 Hz envelope
        assert abs(_peak(env - env.mean(), 100, lo=0.5) - PULSES[speed]) < 0.5


def test_pitch_contour_follows_vertical_motion():
    up = render_audio(_one(direction="up"), np.random.default_rng(0), 3.2).astype(np.float64)
    down = render_audio(_one(direction="down"), np.random.default_rng(0), 3.2).astype(np.float64)
    half = len(up) // 2
    assert _peak(up[half:], 16000) > _peak(up[:half], 16000) * 1.03
    assert _peak(down[half:], 16000) < _peak(down[:half], 16000) / 1.03


@pytest.mark.parametrize("direction, axis, sign", [("right", 1, 1), ("left", 1, -1), ("up", 0, -1), ("down", 0, 1)])
def test_objects_move_in_the_named_direction_with_their_colour(direction, axis, sign):
    video = render_video(_one(direction=direction, speed="slow", x0=56.0, y0=56.0), np.random.default_rng(0))
    red = np.array(COLOURS["red"][0])
    mask = np.abs(video.astype(int) - red).sum(-1) < 30  # (T, H, W) pixels of the object's colour
    assert mask[0].sum() > 400  # a large circle, radius 20
    centroid = [np.argwhere(m).mean(axis=0) for m in (mask[0], mask[-1])]
    moved = (centroid[1] - centroid[0])[axis] * sign
    assert abs(moved - shapes.SPEEDS["slow"] * 3.1) < 2.0  # 31 frame steps at 10 fps
    assert abs((centroid[1] - centroid[0])[1 - axis]) < 1.0


def test_tokenizer_learns_whole_words_on_the_captions(tmp_path):
    """A 300-video caption corpus (given as manifest entries) -> mostly one token per word, short enough."""
    entries = []
    for i in range(300):
        rng = clip_rng(0, "train", i)
        caps = make_captions(sample_scene(rng), rng)
        entries.append(ManifestEntry(id=str(i), media=tmp_path / f"{i}.mp4", captions=tuple(Caption(c) for c in caps)))
    tok = Tokenizer(train_tokenizer(entries, 1000, tmp_path / "shapes.model"))
    val = []
    for i in range(64):
        rng = clip_rng(0, "val", i)
        val += make_captions(sample_scene(rng), rng)
    lengths = np.array([len(tok.encode(c)) for c in val])
    words = np.array([len(c.replace(",", " ,").replace(";", " ;").replace(":", " :").split()) for c in val])
    assert lengths.sum() <= 1.1 * words.sum()
    assert (lengths <= demo_preprocess().max_text_len).mean() >= 0.9
