"""Manifest parsing, MIL-NCE positives, the clip dataset, collate, bad-media handling and transforms."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data.manifest import (
    Caption,
    DataFailureError,
    FailureTracker,
    ManifestDataset,
    ManifestError,
    batch_size,
    caption_texts,
    clip_starts,
    collate,
    nearest_captions,
    read_manifest,
)
from data.schema import ConfigError
from data.tokenizer import Tokenizer, train_tokenizer
from data.transforms import AudioTransform, PreprocessConfig, VideoTransform
from tests.conftest import run_python
from tests.data.conftest import GREY_FPS, grey_level

# Six timed captions, 2 s each, on a 12 s timeline; plus one entry with untimed captions.
TIMED = [(f"step {w} of the recipe", 2.0 * i, 2.0 * i + 2.0) for i, w in enumerate("abcdef")]

SMALL = PreprocessConfig(
    num_frames=8, fps=10.0, image_size=32, resize_size=32, sample_rate=8000, max_text_len=16, num_positives=3
)


def write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ('{"captions": []}', "'media'"),
        ('{"media": "a.mp4", "caption": "x"}', "unknown key"),
        ('{"media": "a.mp4", "captions": [{"text": "x", "start": 3.0}]}', "both 'start' and 'end'"),
        ('{"media": "a.mp4", "captions": [{"text": "x", "start": 3.0, "end": 1.0}]}', "before its start"),
        ('{"media": "a.mp4", "start": 5, "end": 2}', "not after start"),
        ('{"media": "a.mp4", "start": "soon"}', "number of seconds"),
        ('["a.mp4"]', "JSON object"),
        ('{"media": "b.mp4", "id": "first"}', "already used on line 1"),
        # JSON, but the wrong types or values.
        ('{"media": 7}', "'media'"),
        ('{"media": "a.mp4", "id": 12}', "'id' must be a string"),
        ('{"media": "a.mp4", "labels": [true]}', "'labels' must be a list of strings or integers"),
        ('{"media": "a.mp4", "captions": "x"}', "'captions' must be a list"),
        ('{"media": "a.mp4", "captions": [{"text": 3}]}', "'text' must be a string"),
        ('{"media": "a.mp4", "end": 1' + "0" * 400 + "}", "finite number of seconds"),
        ('{"media": "a\\u0000.mp4"}', "NUL character"),
        ('{"media": "a.mp4", "captions": ["caf\\udc81"]}', "unpaired surrogate"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_bad_lines_give_one_line_errors_with_line_numbers(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text('{"media": "ok.mp4", "id": "first"}\n\n' + line + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3") and message in text and "\n" not in text


def test_unreadable_manifests_give_one_line_errors(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"media": "a.mp4"}\n\n{"media": "caf\xe9.mp4"}\n')  # line 3 is Latin-1
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 0xe9 at byte column 15); expected a UTF-8 JSONL file"
    folder = tmp_path / "corpus.jsonl"
    folder.mkdir()
    with pytest.raises(ManifestError) as info:
        read_manifest(folder)
    assert str(info.value) == f"{folder}: is a directory, expected a JSONL manifest file"
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "absent.jsonl")
    assert str(info.value) == f"manifest not found: {tmp_path / 'absent.jsonl'}"
    # A byte-order mark (as some editors write) is not an error; UTF-8 text after it is kept.
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"media": "a.mp4", "captions": ["caf\xc3\xa9"]}\n')
    (entry,) = read_manifest(bom)
    assert entry.media == (tmp_path / "a.mp4").resolve() and entry.captions[0].text == "caf\u00e9"


def test_parse_resolves_paths_and_keeps_everything(tmp_path):
    sub = tmp_path / "corpus"
    sub.mkdir()
    rows = [
        {"media": "v/a.mp4", "start": 1.5, "end": 9, "captions": [{"text": "x", "start": 2, "end": 3}, "y"]},
        {"media": "/abs/b.mp4", "id": "bee", "labels": ["dog", 7]},
    ]
    a, b = read_manifest(write_manifest(sub / "m.jsonl", rows))
    assert a.media == (sub / "v" / "a.mp4").resolve() and a.id == "v/a.mp4@1.5"
    assert (a.start, a.end) == (1.5, 9.0)
    assert a.captions == (Caption("x", 2.0, 3.0), Caption("y"))
    assert b.media == Path("/abs/b.mp4") and b.id == "bee" and b.labels == ("dog", "7") and b.captions == ()
    assert caption_texts([a, b]) == ["x", "y"]


# --------------------------------------------------------------------------- MIL-NCE positives


def brute_force_positives(captions, clip_start, clip_end, k):
    """Reference: float64 distances written out separately from the library's key function."""
    centre = (clip_start + clip_end) / 2
    scored = []
    for i, (_, s, e) in enumerate(captions):
        inside = s <= centre <= e
        gap = 0.0 if inside else min(abs(centre - s), abs(centre - e))
        scored.append((gap, abs((s + e) / 2 - centre), i))
    return [i for _, _, i in sorted(scored)][:k]


@pytest.mark.parametrize("clip_start", [0.0, 3.0, 4.4, 6.9, 8.8, 11.0, 20.0])
def test_nearest_captions_match_brute_force(clip_start):
    caps = [Caption(t, s, e) for t, s, e in TIMED]
    got = nearest_captions(caps, clip_start, clip_start + 3.2, k=5)
    assert got == brute_force_positives(TIMED, clip_start, clip_start + 3.2, 5)


def test_nearest_captions_hand_checked():
    caps = [Caption(t, s, e) for t, s, e in TIMED]
    # Clip [3.0, 6.2): centre 4.6 lies in caption 2 [4, 6]; then 1 (0.6 s away), 3 (1.4), 0 (2.6), 4 (3.4).
    assert nearest_captions(caps, 3.0, 6.2, k=5) == [2, 1, 3, 0, 4]
    # Centre outside every caption: the nearest edge wins; a caption whose edge is the centre contains it.
    gappy = [Caption("a", 0.0, 1.0), Caption("b", 5.0, 6.0), Caption("c", 2.5, 3.0)]
    assert nearest_captions(gappy, 1.5, 3.5, k=3) == [2, 0, 1]  # centre 2.5: c (0), a (1.5), b (2.5)
    assert nearest_captions(gappy, 3.1, 4.1, k=2) == [2, 1]  # centre 3.6: c (0.6), b (1.4), a (2.6)


def test_untimed_captions_keep_order_in_eval_and_shuffle_in_train():
    caps = [Caption(f"c{i}") for i in range(8)]
    assert nearest_captions(caps, 0.0, 3.2, k=5) == [0, 1, 2, 3, 4]
    firsts = {nearest_captions(caps, 0.0, 3.2, k=5, generator=torch.Generator().manual_seed(s))[0] for s in range(40)}
    assert len(firsts) >= 5


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, grey_ramp, fast_ramp, bad_files):
    """A hand-written manifest over the generated files; the grey ramp twice with different windows."""
    d = tmp_path_factory.mktemp("corpus")
    timed = [{"text": t, "start": s, "end": e} for t, s, e in TIMED]
    rows = [
        {"media": str(grey_ramp), "id": "grey", "captions": timed},
        {"media": str(fast_ramp), "id": "silent", "captions": ["a grey ramp without sound"]},
        {"media": str(grey_ramp), "id": "grey_late", "start": 2.0, "end": 4.8},
        {"media": str(grey_ramp), "id": "grey_untimed", "captions": ["first of three", "second one", "third"]},
    ]
    manifest = write_manifest(d / "good.jsonl", rows)
    texts = caption_texts(read_manifest(manifest))
    tok = Tokenizer(train_tokenizer(texts * 4, vocab_size=80, out=d / "tok.model"))
    bad_rows = rows + [{"media": str(p), "id": k} for k, p in sorted(bad_files.items())]
    return {"manifest": manifest, "bad": write_manifest(d / "bad.jsonl", bad_rows), "tok": tok, "dir": d}


def grey_index_of(video: torch.Tensor) -> list[int]:
    """Source frame index per output frame of the grey ramp, from normalised values back to levels."""
    levels = ((video.double() + 1) / 2 * 255).mean(dim=(1, 2, 3))
    return [round((x - grey_level(0)) / (grey_level(1) - grey_level(0))) for x in levels.tolist()]


def test_eval_clips_uniformly_spaced_and_deterministic(corpus):
    ds = ManifestDataset(corpus["manifest"], SMALL, corpus["tok"], train=False, clips_per_video=3)
    assert len(ds) == 12
    # grey: 4.8 s file, 0.8 s clips -> starts 0.0, 2.0, 4.0; grey_late: window [2.0, 4.8] -> 2.0, 3.0, 4.0.
    for item_index, start in [(0, 0.0), (1, 2.0), (2, 4.0), (6, 2.0), (7, 3.0), (8, 4.0)]:
        item = ds[item_index]
        first = round(start * GREY_FPS)
        assert grey_index_of(item["video"]) == list(range(first, first + 8))
        assert item["id"].endswith(f"@{start:.3f}")
        assert item["clip_index"] == item_index % 3 and item["video_index"] == item_index // 3
    a, b = ds[4], ds[4]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])


def test_clip_starts_spread_from_first_to_last_room():
    """One rule for evaluation clips, in seconds (ManifestDataset) and in samples (audio queries)."""
    assert clip_starts(2.8, 1) == [1.4]  # a single clip in the middle
    assert clip_starts(4.0, 3) == [0.0, 2.0, 4.0]
    assert clip_starts(0.0, 4) == [0.0] * 4
    for slack in (7, 480_001, 1_234_567):  # samples: rounded as eval.embed does, same as the former inline rule
        for n in (1, 2, 3, 4, 7):
            want = [round(slack * (0.5 if n == 1 else i / (n - 1))) for i in range(n)]
            assert [round(s) for s in clip_starts(slack, n)] == want


def test_item_contract_and_ranges(corpus):
    ds = ManifestDataset(corpus["manifest"], SMALL, corpus["tok"], train=True)
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (8, 3, 32, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["audio"].shape == (SMALL.audio_samples,) == (6400,)
        assert item["audio"].abs().max() <= 1
        assert item["text_ids"].shape == (3, 16) and item["text_lengths"].shape == (3,)
    assert ds[1]["audio_mask"] == 0.0 and ds[1]["audio"].abs().max() == 0  # file without audio
    assert ds[0]["audio_mask"] == 1.0
    no_text = ds[2]
    assert no_text["text_mask"] == 0.0 and no_text["text_lengths"].sum() == 0 and no_text["text_ids"].sum() == 0


def test_train_clips_random_inside_entry_window(corpus):
    ds = ManifestDataset(corpus["manifest"], SMALL, None, train=True)
    torch.manual_seed(1)
    starts = [float(ds[2]["id"].split("@")[1]) for _ in range(12)]
    assert all(2.0 <= s <= 4.0 for s in starts) and len(set(starts)) > 6  # window [2.0, 4.8] minus 0.8 s


def test_text_positives_follow_the_clip(corpus):
    tok = corpus["tok"]
    ds = ManifestDataset(corpus["manifest"], SMALL, tok, train=False, clips_per_video=3)
    caps = [Caption(t, s, e) for t, s, e in TIMED]
    for clip in range(3):
        item = ds[clip]
        start = float(item["id"].split("@")[1])
        picked = nearest_captions(caps, start, start + SMALL.clip_seconds, 3)
        want = [tok.decode(tok.encode(TIMED[i][0])[:16]) for i in picked]
        got = [tok.decode(row[:n].tolist()) for row, n in zip(item["text_ids"], item["text_lengths"])]
        assert got == want
        assert item["text_mask"] == 1.0
    # Only one caption: one positive slot filled, the rest empty.
    silent = ds[3]
    assert silent["text_lengths"].tolist()[1:] == [0, 0] and silent["text_lengths"][0] > 0


def test_collate_batch_contract(corpus):
    ds = ManifestDataset(corpus["manifest"], SMALL, corpus["tok"], train=False, clips_per_video=2)
    items = [ds[i] for i in range(5)]
    batch = collate(items)
    assert batch["video"].shape == (5, 8, 3, 32, 32)
    assert batch["audio"].shape == (5, 6400)
    # padding beyond the batch's longest caption is cut; nothing else is
    longest = int(max(x["text_lengths"].max() for x in items))
    assert 0 < longest < 16 and batch["text_ids"].shape == (5, 3, longest) and batch["text_ids"].dtype == torch.int64
    for x, ids in zip(items, batch["text_ids"]):
        assert torch.equal(ids, x["text_ids"][:, :longest]) and not x["text_ids"][:, longest:].any()
    assert batch["text_lengths"].shape == (5, 3) and batch["text_lengths"].dtype == torch.int64
    assert batch["audio_mask"].tolist() == [1, 1, 0, 0, 1] and batch["audio_mask"].dtype == torch.float32
    assert batch["text_mask"].tolist() == [1, 1, 1, 1, 0]
    assert batch["video_index"].tolist() == [0, 0, 1, 1, 2] and batch["clip_index"].tolist() == [0, 1, 0, 1, 0]
    assert len(batch["ids"]) == 5 and batch["failures"] == []


# --------------------------------------------------------------------------- bad media


def test_bad_media_skipped_counted_logged_once_with_workers(corpus, bad_files, caplog):
    ds = ManifestDataset(corpus["bad"], SMALL, corpus["tok"], train=True)
    bad_paths = {str(p) for p in bad_files.values()}
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate)
    tracker = FailureTracker(max_fail_fraction=0.9, min_attempts=1)
    seen_ids, seen_failures = [], []
    with caplog.at_level(logging.WARNING, logger="data.collate"):
        for _epoch in range(2):
            for batch in loader:
                tracker.update(batch)
                seen_failures += [p for p, _ in batch["failures"]]
                if batch_size(batch):
                    seen_ids += batch["ids"]
                    # No stand-in zero videos: every clip in a batch is real decoded content.
                    assert (batch["video"].flatten(1).abs().amax(dim=1) > 0).all()
    assert len(seen_ids) == 2 * 4 and tracker.attempts == 2 * len(ds)
    assert sorted(seen_failures) == sorted(list(bad_paths) * 2)
    assert tracker.failed == 2 * len(bad_paths)
    warned = [r.getMessage() for r in caplog.records if "bad media" in r.getMessage()]
    assert len(warned) == len(bad_paths)  # once per file, not once per attempt
    assert all(any(p in m for m in warned) for p in bad_paths)


def test_failure_threshold_stops_with_readable_message(corpus, bad_files):
    ds = ManifestDataset(corpus["bad"], SMALL, None, train=False, clips_per_video=1)
    tracker = FailureTracker(max_fail_fraction=0.01, min_attempts=3)
    with pytest.raises(DataFailureError) as info:
        for batch in DataLoader(ds, batch_size=2, collate_fn=collate):
            tracker.update(batch)
    message = str(info.value)
    assert "max_fail_fraction 1%" in message and "first failures" in message
    assert str(bad_files["empty"]) in message or str(bad_files["missing"]) in message
    assert message.splitlines()[0].startswith(f"{tracker.failed} of {tracker.attempts} clips failed")


def test_threshold_respects_min_attempts_then_final_check():
    tracker = FailureTracker(max_fail_fraction=0.25, min_attempts=10)
    tracker.update({"ids": ["a"], "failures": [("x.mp4", "empty file")]})  # 50%, but only 2 attempts
    tracker.update({"ids": ["b", "c", "d"], "failures": [("x.mp4", "empty file")]})  # 33% of 6: still too few
    assert (tracker.attempts, tracker.failed) == (6, 2)
    with pytest.raises(DataFailureError, match="2 of 6 clips failed"):
        tracker.check(final=True)  # end of epoch: judged whatever the count
    fresh = FailureTracker(max_fail_fraction=0.25, min_attempts=10)
    fresh.load_state_dict(tracker.state_dict())
    fresh.update({"ids": ["e", "f", "g", "h"], "failures": []})  # 2 of 10 = 20%: within budget
    with pytest.raises(DataFailureError, match="3 of 11"):
        fresh.update({"ids": [], "failures": [("y.mp4", "no video stream")]})


# --------------------------------------------------------------------------- transforms and config


def test_preprocess_defaults_and_strict_round_trip():
    cfg = PreprocessConfig()
    assert cfg.audio_samples == 153600 and (cfg.num_frames, cfg.fps, cfg.image_size) == (32, 10.0, 224)
    d = cfg.to_dict()
    assert d["audio_samples"] == 153600 and d["mean"] == [0.5, 0.5, 0.5]
    assert PreprocessConfig.from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match="num_frame"):
        PreprocessConfig.from_dict({"num_frame": 8})
    with pytest.raises(ConfigError, match="audio_samples"):
        PreprocessConfig.from_dict({**d, "num_frames": 8})  # stale derived value
    with pytest.raises(ConfigError):
        PreprocessConfig.from_dict({"fps": "fast"})
    small = PreprocessConfig.from_dict({"num_frames": 8, "sample_rate": 16000})
    assert small.audio_samples == round(16000 * 8 / 10.0)


def test_eval_video_transform_equals_float64_reference():
    torch.manual_seed(0)
    cfg = PreprocessConfig(image_size=4, resize_size=6, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))
    video = torch.randint(0, 256, (3, 3, 6, 10), dtype=torch.uint8)  # shorter side already 6: no resize
    out = VideoTransform(cfg, train=False)(video)
    crop = video.double()[:, :, 1:5, 3:7] / 255
    ref = (crop - torch.tensor(cfg.mean, dtype=torch.float64)[:, None, None]) / torch.tensor(
        cfg.std, dtype=torch.float64
    )[:, None, None]
    assert out.dtype == torch.float32 and out.shape == (3, 3, 4, 4)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)


def test_train_video_transform_same_augmentation_for_every_frame():
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 3, 40, 56), dtype=torch.uint8)
    video = frame.expand(6, -1, -1, -1).clone()
    transform = VideoTransform(PreprocessConfig(image_size=16, resize_size=40, min_scale=0.2), train=True)
    outs = [transform(video) for _ in range(5)]
    for out in outs:
        assert out.shape == (6, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
        assert torch.equal(out, out[:1].expand_as(out))  # one crop/flip/jitter for the whole clip
    assert not torch.equal(outs[0], outs[1])  # but a new one per call


def test_audio_transform_gain_and_vatt_noise():
    cfg = PreprocessConfig(audio_gain_db=0.0, audio_noise=0.01)
    x = 0.5 * torch.sin(torch.linspace(0, 200 * math.pi, 48000))
    assert torch.equal(AudioTransform(cfg, train=False)(x), x)
    torch.manual_seed(0)
    noisy = AudioTransform(cfg, train=True)(x)
    assert abs((noisy - x).std().item() - 0.01 * 0.5) < 2e-4  # noise std = 0.01 * max|x|
    quiet = AudioTransform(PreprocessConfig(audio_gain_db=6.0, audio_noise=0.0), train=True)
    ratios = [quiet(x).abs().max().item() / 0.5 for _ in range(50)]
    assert min(ratios) >= 10 ** (-6 / 20) - 1e-6 and max(ratios) <= 1.0 and max(ratios) - min(ratios) > 0.2


def test_audio_standardize_gives_unit_variance_and_keeps_silence():
    from data.transforms import AudioTransform, PreprocessConfig

    cfg = PreprocessConfig(num_frames=4, fps=10.0, sample_rate=8000, audio_standardize=True)
    wave = 0.05 * torch.sin(torch.arange(3200, dtype=torch.float64) * 0.3).float() + 0.01
    for train in (False, True):
        out = AudioTransform(cfg, train)(wave)
        assert abs(out.mean().item()) < 1e-4 and abs(out.std().item() - 1.0) < 1e-3
    assert torch.equal(AudioTransform(cfg, False)(torch.zeros(3200)), torch.zeros(3200))


def test_region_and_grayscale_equal_float64_reference():
    torch.manual_seed(0)
    video = torch.randint(0, 256, (2, 3, 12, 16), dtype=torch.uint8)
    cfg = PreprocessConfig(image_size=4, resize_size=4, region=(5, 3, 9, 7), grayscale=True)
    out = VideoTransform(cfg, train=False)(video)
    box = video.double()[:, :, 3:7, 5:9]  # rows top:bottom, columns left:right
    luma = (0.2989 * box[:, 0] + 0.587 * box[:, 1] + 0.114 * box[:, 2])[:, None].expand(-1, 3, -1, -1)
    ref = (luma.floor() / 255 - 0.5) / 0.5  # torchvision truncates uint8 luma
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=0)
    train_out = VideoTransform(dataclasses.replace(cfg, min_scale=0.5), train=True)(video)
    assert torch.equal(train_out[:, 0], train_out[:, 1]) and torch.equal(train_out[:, 0], train_out[:, 2])


def test_region_errors_name_the_box():
    with pytest.raises(ConfigError, match="region"):
        PreprocessConfig(region=(10, 0, 5, 8))
    with pytest.raises(ConfigError, match="region"):
        PreprocessConfig.from_dict({"region": [0, 0, 8]})
    video = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"region \[0, 0, 16, 8\] reaches outside the 8x8 frame"):
        VideoTransform(PreprocessConfig(image_size=4, resize_size=4, region=(0, 0, 16, 8)), train=False)(video)
    assert PreprocessConfig.from_dict(PreprocessConfig(region=(1, 2, 3, 4)).to_dict()).region == (1, 2, 3, 4)


# --------------------------------------------------------------------------- decoded-clip cache


@pytest.fixture()
def one_clip_rows(grey_ramp, fast_ramp, bad_files):
    """Two entries exactly one clip long (0.8 s), one long entry (random windows), one unreadable file."""
    timed = [{"text": t, "start": s, "end": e} for t, s, e in TIMED]
    return [
        {"media": str(grey_ramp), "id": "grey_one", "start": 1.0, "end": 1.8, "captions": timed},
        {"media": str(fast_ramp), "id": "silent_one", "end": 0.8, "captions": ["a grey ramp without sound"]},
        {"media": str(grey_ramp), "id": "grey_long", "captions": timed},
        {"media": str(bad_files["truncated"]), "id": "broken"},
    ]


def _items(ds, keys):
    """Fetch items under fixed seeds, as training does (SeededItems)."""
    from data.sampling import SeededItems

    seeded = SeededItems(ds)
    return [seeded[k] for k in keys]


def _assert_same_items(got, want):
    for a, b in zip(got, want, strict=True):
        if not isinstance(b, dict):
            assert type(a) is type(b) and a.reason == b.reason
            continue
        assert a["id"] == b["id"]
        for k in ("video", "audio", "text_ids", "text_lengths"):
            assert torch.equal(a[k], b[k]), k
        assert (a["audio_mask"], a["text_mask"]) == (b["audio_mask"], b["text_mask"])


@pytest.mark.parametrize("train", [True, False])
def test_cache_and_prefill_give_the_same_items_as_decoding(tmp_path, one_clip_rows, corpus, train):
    entries = read_manifest(write_manifest(tmp_path / "m.jsonl", one_clip_rows))
    keys = [(i, 100 + j) for j in range(3) for i in range(len(entries))]  # every item three times
    plain = ManifestDataset(entries, SMALL, corpus["tok"], train=train, clips_per_video=1)
    want = _items(plain, keys)
    lazy = ManifestDataset(entries, SMALL, corpus["tok"], train=train, clips_per_video=1, cache_mb=64)
    _assert_same_items(_items(lazy, keys), want)  # misses first, then hits
    assert len(lazy._decoded) >= 2  # the long entry adds a key per random window in training
    filled = ManifestDataset(entries, SMALL, corpus["tok"], train=train, clips_per_video=1, cache_mb=64)
    assert filled.prefill(num_workers=2, progress=False) == 2  # the one-clip entries; not the long or broken
    assert sorted(k[0] for k in filled._decoded) == [0, 1]
    _assert_same_items(_items(filled, keys), want)
    # A hit must not hand out a tensor that augmentation can change: the cached frames stay as decoded.
    cached = filled._decoded[(0, 1.0)][0].clone()
    _items(filled, keys)
    assert torch.equal(filled._decoded[(0, 1.0)][0], cached)


def test_prefill_skips_a_corpus_bigger_than_the_cache(tmp_path, one_clip_rows, corpus, caplog):
    entries = read_manifest(write_manifest(tmp_path / "m.jsonl", one_clip_rows))
    ds = ManifestDataset(entries, SMALL, corpus["tok"], train=True, cache_mb=0.01)  # 10 kB: not one clip
    with caplog.at_level(logging.INFO, logger="data.manifest"):
        assert ds.prefill(progress=False) == 0
    assert "not prefilling" in caplog.text and len(ds._cache()) == 0
    with pytest.raises(ValueError, match="cache_mb"):
        ManifestDataset(entries, SMALL, corpus["tok"], train=True).prefill(progress=False)


_PREFILL_UNDER_A_LOW_FD_LIMIT = """
import json, resource, sys
from pathlib import Path
import numpy as np
import torch
from data.manifest import ManifestDataset
from data.media import MediaReader
from data.synth.mediawriter import write_mp4
from data.transforms import PreprocessConfig

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
limit = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))  # macOS's default; Linux desktops have 1024
out, clips = Path(sys.argv[1]), int(sys.argv[2])
files = []
for k in range(3):  # three files with different frames and tones
    frames = np.full((4, 16, 16, 3), 40 + 60 * k, np.uint8)
    tone = (0.3 * np.sin(np.arange(3200) * 0.05 * (k + 1))).astype(np.float32)
    files.append(write_mp4(out / f"c{k}.mp4", frames, 10.0, tone, 8000))
manifest = out / "m.jsonl"
manifest.write_text("".join(json.dumps({"media": f"c{i % 3}.mp4", "id": f"clip{i}"}) + "\\n" for i in range(clips)))
cfg = PreprocessConfig(num_frames=4, fps=10.0, image_size=16, resize_size=16, sample_rate=8000)
ds = ManifestDataset(manifest, cfg, train=False, clips_per_video=1, cache_mb=64)
cached = ds.prefill(num_workers=2, progress=False)
reference = []  # decoded in this process, without the cache
for path in files:
    with MediaReader(path) as reader:
        reference.append((reader.read_video(0.0, 4, 10.0, size=16), reader.read_audio(0.0, 3200, 8000)))
same = all(
    all(torch.equal(got, want) for got, want in zip(ds._decoded[(i, 0.0)], reference[i % 3], strict=True))
    for i in range(clips)
)
limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
print(json.dumps({"limit": limit, "cached": cached, "keys": len(ds._decoded), "same": same}))
"""


def test_prefill_with_workers_under_a_low_open_file_limit(tmp_path):
    """More clips than the process may open files: worker results must not hold a descriptor per clip."""
    clips = 300
    done = run_python(["-c", _PREFILL_UNDER_A_LOW_FD_LIMIT, str(tmp_path), str(clips)], timeout=120)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"limit": 256, "cached": clips, "keys": clips, "same": True}
