"""The LRS2 reader on a fixture written by hand in the exact layout of the distributed dataset."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.batching import FrameBudgetBatchSampler
from data.collate import FailureTracker, ItemFailure
from data.lrs2 import (
    LRS2Config,
    LRS2Dataset,
    LRS2FormatError,
    clip_path,
    collate_lrs2,
    mouth_centres,
    parse_transcript,
    read_split,
    read_transcript,
)
from data.synth.mediawriter import write_mp4

SR = 16000
FPS = 25.0
BOX = (32, 64, 128, 160)  # the default mouth box

MAIN_TEXT = "Text:  WHEN YOU'RE COOKING CHIPS AT HOME\nConf:  4\n"
PRETRAIN_TEXT = (
    "Text:  THE DANGEROUS THING IS 2 PANS\n"
    "Conf:  3\n"
    "\n"
    "WORD START END ASDSCORE\n"
    "THE 0.00 0.12 6.5\n"
    "DANGEROUS 0.12 0.61 8.2\n"
    "THING 0.61 0.90 7.1\n"
    "IS 0.90 1.02 7.7\n"
    "2 1.02 1.30 5.0\n"
    "PANS 1.30 1.70 4.9\n"
)

# (split folder, clip id, frames, transcript)
CLIPS = [
    ("main", "5535415699068794046/00001", 30, MAIN_TEXT),
    ("main", "5535415699068794046/00002", 22, "Text:  IT'S A LOVELY DAY\nConf:  9\n"),
    ("main", "6330311066473698535/00011", 26, "Text:  SO WHAT HAPPENED\nConf:  2\n"),
    ("main", "6330311066473698535/00012", 18, "Text:  NOTHING\nConf:  5\n"),
    ("main", "6339356267468615354/00003", 20, "Text:  THANK YOU\nConf:  7\n"),
    ("pretrain", "5535415699068794046/00005", 44, PRETRAIN_TEXT),
]
SPLIT_FILES = {
    "pretrain.txt": "5535415699068794046/00005\n",
    "train.txt": "5535415699068794046/00001\n5535415699068794046/00002\n",
    "val.txt": "6339356267468615354/00003\n",
    "test.txt": "6330311066473698535/00011 NF\n6330311066473698535/00012 MV\n",
}


def pattern(num_frames: int, seed: int) -> np.ndarray:
    """160x160 frames: a smooth diagonal ramp (compresses well) with a level that changes per frame,
    plus a bright dot that marks the mouth in landmark tests."""
    y, x = np.mgrid[0:160, 0:160]
    base = 40 + 0.6 * x + 0.3 * y + seed
    frames = np.zeros((num_frames, 160, 160, 3), np.uint8)
    for t in range(num_frames):
        level = np.clip(base + 2 * t, 0, 255)
        frames[t] = level[..., None].astype(np.uint8)
    return frames


def sine(num_samples: int, freq: float) -> np.ndarray:
    t = np.arange(num_samples) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def lrs2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lrs2")
    for k, (folder, clip_id, frames, text) in enumerate(CLIPS):
        base = root / "mvlrs_v1" / folder / clip_id
        base.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(base.with_suffix(".mp4"), pattern(frames, k), FPS, sine(frames * 640, 300 + 100 * k), SR)
        base.with_suffix(".txt").write_text(text)
    for name, content in SPLIT_FILES.items():
        (root / name).write_text(content)
    return root


def test_split_lists(lrs2_root):
    assert [e.id for e in read_split(lrs2_root, "train")] == ["5535415699068794046/00001", "5535415699068794046/00002"]
    test = read_split(lrs2_root, "test")
    assert [(e.id, e.flag) for e in test] == [("6330311066473698535/00011", "NF"), ("6330311066473698535/00012", "MV")]
    assert read_split(lrs2_root / "mvlrs_v1", "val")[0].id == "6339356267468615354/00003"  # root may be mvlrs_v1
    assert clip_path(lrs2_root, "pretrain", "a/b") == lrs2_root / "mvlrs_v1" / "pretrain" / "a" / "b.mp4"
    assert clip_path(lrs2_root, "test", "a/b", ".txt") == lrs2_root / "mvlrs_v1" / "main" / "a" / "b.txt"


def test_transcripts(lrs2_root):
    main = read_transcript(lrs2_root / "mvlrs_v1" / "main" / "5535415699068794046" / "00001.txt")
    assert main.text == "WHEN YOU'RE COOKING CHIPS AT HOME" and main.conf == "4" and main.words is None
    pre = read_transcript(lrs2_root / "mvlrs_v1" / "pretrain" / "5535415699068794046" / "00005.txt")
    assert pre.text == "THE DANGEROUS THING IS 2 PANS" and pre.conf == "3"
    assert [(w.word, w.start, w.end, w.score) for w in pre.words][:2] == [
        ("THE", 0.0, 0.12, 6.5),
        ("DANGEROUS", 0.12, 0.61, 8.2),
    ]
    assert pre.words[-1].end == 1.70
    # Other header fields are kept; a table straight after the header (no blank line) is accepted.
    other = parse_transcript("Text:  HI THERE\nConf:  1\nRef:  x\nWORD START END ASDSCORE\nHI 0 1 2\nTHERE 1 2 3\n")
    assert other.fields == {"Ref": "x"} and [w.word for w in other.words] == ["HI", "THERE"]
    with pytest.raises(LRS2FormatError, match=r"^clip\.txt:1:"):
        parse_transcript("WORD START END ASDSCORE\n", "clip.txt")


@pytest.mark.parametrize(
    "content, line, what",
    [
        ("Conf:  4\n", 1, "no 'Text:'"),
        ("Text:  HELLO\nthis line is junk\n", 2, "header line"),
        ("Text:  HELLO\nConf:  high\n", 2, "not a number"),
        ("Text:  \nConf:  4\n", 1, "empty"),
        ("Text:  HI\nText:  HI\n", 2, "repeated"),
        ("Text:  HI THERE\nConf:  3\n\nWORD START END\nHI 0.0 0.1 1.0\n", 4, "word table header"),
        ("Text:  HI THERE\nConf:  3\n\nWORD START END ASDSCORE\nHI 0.0 0.1\n", 5, "4 fields"),
        ("Text:  HI THERE\nConf:  3\n\nWORD START END ASDSCORE\nHI 0.0 0.1 1\nTHERE 0.5 zero 1\n", 6, "numbers"),
        ("Text:  HI THERE\nConf:  3\n\nWORD START END ASDSCORE\nHI 0.3 0.1 1\n", 5, "START <= END"),
        ("Text:  HI THERE\nConf:  3\n\nWORD START END ASDSCORE\n", 4, "without any word"),
    ],
)
def test_malformed_transcripts_name_file_and_line(tmp_path, content, line, what):
    path = tmp_path / "12345" / "00007.txt"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(LRS2FormatError) as err:
        read_transcript(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}:") and what in message


def test_malformed_split_lists(tmp_path):
    (tmp_path / "mvlrs_v1" / "main").mkdir(parents=True)
    (tmp_path / "train.txt").write_text("123/00001\n123/00002 NF extra\n")
    with pytest.raises(LRS2FormatError, match=r"train\.txt:2:"):
        read_split(tmp_path, "train")
    (tmp_path / "pretrain.txt").write_text("123/00001\n123/00001\n123/00002\n")  # a repeat is dropped
    assert [e.id for e in read_split(tmp_path, "pretrain")] == ["123/00001", "123/00002"]
    (tmp_path / "val.txt").write_text("123/00001\n\n00002\n")
    with pytest.raises(LRS2FormatError, match=r"val\.txt:3:.*<programme>/<clip>"):
        read_split(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        read_split(tmp_path, "test")


def reference_roi(frames: np.ndarray, box: tuple[int, int, int, int], crop: int = 88) -> np.ndarray:
    """Independent eval ROI in float64: BT.601 luma, box crop (already 96x96), centre crop, normalise."""
    gray = frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114
    left, top, right, bottom = box
    roi = gray[:, top:bottom, left:right]
    off = (roi.shape[1] - crop) // 2
    roi = roi[:, off : off + crop, off : off + crop]
    return (roi / 255.0 - 0.421) / 0.165


def test_dataset_item_matches_an_independent_reference(lrs2_root):
    ds = LRS2Dataset(LRS2Config(root=str(lrs2_root)), "test")
    assert not ds.train and len(ds) == 2 and ds.lengths() == [26, 18]
    item = ds[0]
    assert item["id"] == "6330311066473698535/00011" and item["text"] == "SO WHAT HAPPENED"
    assert item["video"].shape == (26, 1, 88, 88) and item["video"].dtype == torch.float32
    assert item["video_length"] == 26 and item["audio_length"] == 26 * 640 == item["audio"].shape[0]
    expected = reference_roi(pattern(26, 2).astype(np.float64), BOX)
    got = item["video"][:, 0].double().numpy()
    assert np.abs(got - expected).mean() < 0.05  # about 2 grey levels after H.264
    ref = sine(26 * 640, 500).astype(np.float64)
    audio = item["audio"].double().numpy()
    assert np.dot(audio, ref) / np.sqrt(np.dot(audio, audio) * np.dot(ref, ref)) > 0.99


def test_training_crops_are_random_per_clip_and_shared_by_frames(lrs2_root):
    ds = LRS2Dataset(LRS2Config(root=str(lrs2_root), hflip_prob=0.0), "train")
    assert ds.train
    full = reference_roi(pattern(30, 0).astype(np.float64), BOX, crop=96)  # (T, 96, 96)
    offsets = set()
    for seed in range(6):
        torch.manual_seed(seed)
        video = ds[0]["video"][:, 0].double().numpy()  # (T, 88, 88)
        # Find the crop offset by brute force on frame 0, then check every frame used the same one.
        errors = {
            (dy, dx): np.abs(full[0, dy : dy + 88, dx : dx + 88] - video[0]).mean()
            for dy in range(9)
            for dx in range(9)
        }
        dy, dx = min(errors, key=errors.get)
        assert np.abs(full[:, dy : dy + 88, dx : dx + 88] - video).mean() < 0.05
        offsets.add((dy, dx))
    assert len(offsets) > 1


def test_landmark_files_centre_the_crop(lrs2_root, tmp_path):
    # A clip with a bright dot that moves; its landmark file says where the dot is.
    root = tmp_path / "lm"
    T = 12
    frames = np.full((T, 160, 160, 3), 90, np.uint8)
    centres = np.stack([60 + np.arange(T) * 2.0, np.full(T, 100.0)], axis=1)
    for t, (x, y) in enumerate(centres):
        frames[t, int(y) - 3 : int(y) + 3, int(x) - 3 : int(x) + 3] = 250
    (root / "mvlrs_v1" / "main" / "777").mkdir(parents=True)
    write_mp4(root / "mvlrs_v1" / "main" / "777" / "00001.mp4", frames, FPS, sine(T * 640, 400), SR, crf=10)
    (root / "mvlrs_v1" / "main" / "777" / "00001.txt").write_text("Text:  DOT\nConf:  1\n")
    (root / "test.txt").write_text("777/00001 NF\n")
    lm_dir = tmp_path / "landmarks" / "777"
    lm_dir.mkdir(parents=True)
    # 68 iBUG points, the mouth ones on the dot's centre in pixel indices (its pixels are x-3 .. x+2).
    points = np.repeat(centres[:, None, :], 68, axis=1) - 0.5
    points[:, :48] = 0.0  # non-mouth points far away must be ignored
    np.save(lm_dir / "00001.npy", points)
    cfg = LRS2Config(root=str(root), landmarks_dir=str(tmp_path / "landmarks"), landmark_smooth=1)
    video = LRS2Dataset(cfg, "test")[0]["video"][:, 0].numpy()  # (T, 88, 88)
    for t in range(T):
        ys, xs = np.nonzero(video[t] > video[t].mean() + 1.0)
        assert abs(ys.mean() - 43.5) < 1.5 and abs(xs.mean() - 43.5) < 1.5
    # Smoothing is a centred moving average (edge-padded), checked against a direct computation.
    raw = np.repeat(centres[:, None, :], 20, axis=1)
    smooth = mouth_centres(raw, T, 5)
    padded = np.concatenate([centres[:1]] * 2 + [centres] + [centres[-1:]] * 2)
    assert np.allclose(smooth, [padded[t : t + 5].mean(0) for t in range(T)])


def test_collate_pads_and_keeps_lengths(lrs2_root):
    ds = LRS2Dataset(LRS2Config(root=str(lrs2_root)), "test")
    items = [ds[0], ds[1]]
    batch = collate_lrs2(items)
    assert batch["video"].shape == (2, 26, 1, 88, 88) and batch["audio"].shape == (2, 26 * 640)
    assert batch["video_lengths"].tolist() == [26, 18] and batch["audio_lengths"].tolist() == [26 * 640, 18 * 640]
    assert batch["text"] == ["SO WHAT HAPPENED", "NOTHING"] and batch["failures"] == []
    assert torch.equal(batch["video"][1, :18], items[1]["video"]) and batch["video"][1, 18:].abs().sum() == 0
    assert (
        torch.equal(batch["audio"][1, : 18 * 640], items[1]["audio"]) and batch["audio"][1, 18 * 640 :].abs().sum() == 0
    )


def test_modalities_noise_hook_and_broken_media(lrs2_root, tmp_path):
    seen = []

    def hook(audio: torch.Tensor, key: str) -> torch.Tensor:
        seen.append(key)
        return audio * 0.5

    audio_only = LRS2Dataset(LRS2Config(root=str(lrs2_root)), "val", audio_transform=hook, load_video=False)
    item = audio_only[0]
    assert "video" not in item and item["video_length"] == 20 and seen == ["6339356267468615354/00003"]
    clean = LRS2Dataset(LRS2Config(root=str(lrs2_root)), "val", load_video=False)[0]["audio"]
    assert torch.allclose(item["audio"], clean * 0.5)
    # A broken file becomes a listed failure instead of killing the DataLoader worker.
    root = tmp_path / "broken"
    (root / "mvlrs_v1" / "main" / "1").mkdir(parents=True)
    (root / "mvlrs_v1" / "main" / "1" / "00001.mp4").write_bytes(b"not an mp4 at all")
    (root / "mvlrs_v1" / "main" / "1" / "00001.txt").write_text("Text:  BROKEN\nConf:  1\n")
    (root / "val.txt").write_text("1/00001\n")
    bad = LRS2Dataset(LRS2Config(root=str(root)), "val")[0]
    assert isinstance(bad, ItemFailure)
    batch = collate_lrs2([bad, item])
    assert batch["ids"] == ["6339356267468615354/00003"] and len(batch["failures"]) == 1


def test_pretrain_split_reads_from_pretrain_folder(lrs2_root):
    ds = LRS2Dataset(LRS2Config(root=str(lrs2_root)), "pretrain")
    assert ds.train and ds.lengths() == [44]
    assert ds.transcript(0).words[1].word == "DANGEROUS"
    assert ds[0]["text"] == "THE DANGEROUS THING IS 2 PANS"


def test_dataloader_with_frame_budget_batches(lrs2_root, tmp_path):
    cache = tmp_path / "lengths.json"
    ds = LRS2Dataset(LRS2Config(root=str(lrs2_root), length_cache=str(cache)), "test")
    lengths = ds.lengths()
    assert (
        cache.exists()
        and LRS2Dataset(LRS2Config(root=str(lrs2_root), length_cache=str(cache)), "test").lengths() == lengths
    )
    sampler = FrameBudgetBatchSampler(lengths, max_frames=40, shuffle=False, epochs=1)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_lrs2)
    batches = list(loader)
    assert sorted(i for b in batches for i in b["ids"]) == sorted(ds.ids)
    for b in batches:
        assert b["video"].shape[0] * b["video"].shape[1] <= 40 or b["video"].shape[0] == 1


def test_manifest_from_lrs2_layout(lrs2_root, tmp_path):
    from data.lrs2_manifest import main, write_manifest
    from data.manifest import read_manifest

    out = tmp_path / "sub" / "speech.jsonl"
    out.parent.mkdir()
    assert write_manifest(lrs2_root, ["pretrain", "train"], out, words_per_caption=2) == 3
    entries = read_manifest(out)
    assert [e.id for e in entries] == [
        "pretrain/5535415699068794046/00005",
        "train/5535415699068794046/00001",
        "train/5535415699068794046/00002",
    ]
    assert entries[0].media.resolve() == (lrs2_root / "mvlrs_v1/pretrain/5535415699068794046/00005.mp4").resolve()
    timed = [(c.text, c.start, c.end) for c in entries[0].captions]
    assert timed == [("THE DANGEROUS", 0.0, 0.61), ("THING IS", 0.61, 1.02), ("2 PANS", 1.02, 1.7)]
    assert [(c.text, c.start) for c in entries[1].captions] == [("WHEN YOU'RE COOKING CHIPS AT HOME", None)]

    # A clip without its media file is left out and counted; nothing at all is an error naming the splits.
    broken = tmp_path / "broken"
    (broken / "mvlrs_v1" / "main" / "x").mkdir(parents=True)
    (broken / "train.txt").write_text("x/00001\n")
    with pytest.raises(ValueError, match=r"splits \['train'\] of .* hold no clip with a media file \(1 missing\)"):
        write_manifest(broken, ["train"], tmp_path / "none.jsonl")
    with pytest.raises(SystemExit, match="data.lrs2_manifest: .*1 missing"):
        main(["--root", str(broken), "--splits", "train", "--out", str(tmp_path / "none.jsonl")])
    assert not (tmp_path / "none.jsonl").exists()


def test_manifest_clips_read_as_pretraining_samples(lrs2_root, tmp_path):
    """The pretraining path on LRS2: mouth region, grayscale, audio of the same span, word captions."""
    from data.lrs2_manifest import write_manifest
    from data.manifest import ManifestDataset, read_manifest
    from data.tokenizer import Tokenizer, train_tokenizer
    from data.transforms import PreprocessConfig

    out = tmp_path / "pre.jsonl"
    write_manifest(lrs2_root, ["pretrain"], out, words_per_caption=1)
    entries = read_manifest(out)
    tok_file = tmp_path / "tok.model"
    train_tokenizer(entries, 40, tok_file)
    cfg = PreprocessConfig(
        num_frames=8,
        fps=FPS,
        image_size=32,
        resize_size=32,
        sample_rate=SR,
        region=BOX,
        grayscale=True,
        num_positives=3,
        max_text_len=8,
    )
    ds = ManifestDataset(entries, cfg, Tokenizer(tok_file), train=False, clips_per_video=1)
    item = ds[0]
    assert item["video"].shape == (8, 3, 32, 32) and item["audio"].shape == (8 * 640,)
    assert torch.equal(item["video"][:, 0], item["video"][:, 2])  # grayscale
    # One centred 0.32 s window of the 1.76 s file: centre 0.88 s, inside THING (0.61-0.90), then the
    # two words nearest in time.
    tok = Tokenizer(tok_file)
    texts = [tok.decode(ids[:n].tolist()) for ids, n in zip(item["text_ids"], item["text_lengths"])]
    assert texts[0].upper() == "THING" and {t.upper() for t in texts[1:]} == {
        "IS",
        "2",
    }  # 0.02 s and 0.14 s away; DANGEROUS is 0.27 s away


# --------------------------------------------------------------------------- untrusted media


def val_layout(root: Path, clip_ids: list[str]) -> Path:
    """An LRS2 layout whose val split lists ``clip_ids``, with transcripts; the media is written later."""
    for clip_id in clip_ids:
        (root / "mvlrs_v1" / "main" / clip_id).parent.mkdir(parents=True, exist_ok=True)
        (root / "mvlrs_v1" / "main" / f"{clip_id}.txt").write_text("Text:  HELLO\nConf:  1\n")
    (root / "val.txt").write_text("".join(f"{c}\n" for c in clip_ids))
    return root


def test_utterance_size_follows_the_content_not_the_declared_duration(tmp_path):
    """A 2 s clip whose container declares an hour reads as 2 s, with no buffer for the hour."""
    from tests.data.test_media import write_mkv_declaring

    root = val_layout(tmp_path, ["900/00001"])
    media = clip_path(root, "val", "900/00001")
    write_mkv_declaring(media, pattern(50, 3), 25, sine(50 * 640, 400), SR, declared=3600.0)
    assert LRS2Dataset(LRS2Config(root=str(root)), "val").lengths() == [60 * 25]  # declared, capped
    item = LRS2Dataset(LRS2Config(root=str(root)), "val")[0]
    assert not isinstance(item, ItemFailure), item
    assert item["video_length"] == 50 and item["video"].shape == (50, 1, 88, 88)
    assert item["audio_length"] == 50 * 640 == item["audio"].shape[0]
    expected = reference_roi(pattern(50, 3).astype(np.float64), BOX)
    assert np.abs(item["video"][:, 0].double().numpy() - expected).mean() < 0.05
    ref = sine(50 * 640, 400).astype(np.float64)
    audio = item["audio"].double().numpy()
    assert np.dot(audio, ref) / np.sqrt(np.dot(audio, audio) * np.dot(ref, ref)) > 0.99
    # Audio only (the video is not decoded): still 2 s, and no buffer sized by the declared hour (numpy
    # buffers are traced; one for 3600 s at 16 kHz would take 230 MB).
    audio_only = LRS2Dataset(LRS2Config(root=str(root)), "val", load_video=False)
    tracemalloc.start()
    try:
        item = audio_only[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not isinstance(item, ItemFailure), item
    assert item["video_length"] == 50 and item["audio"].shape == (50 * 640,)
    assert np.allclose(item["audio"].double().numpy(), audio, atol=1e-6)
    assert peak < 16 * 2**20
    # Longer than the configured cap: skipped and counted, never cut (its transcript covers all of it).
    capped = LRS2Dataset(LRS2Config(root=str(root), max_seconds=1.5), "val")
    failure = capped[0]
    assert isinstance(failure, ItemFailure) and failure.path == str(media)
    assert failure.reason == f"utterance longer than max_seconds=1.5 (LRS2Config.max_seconds): {media}"
    assert capped.lengths() == [round(1.5 * FPS)]


def test_clip_without_audio_is_a_counted_failure_when_audio_is_needed(tmp_path):
    root = val_layout(tmp_path, ["901/00001", "901/00002"])
    silent = clip_path(root, "val", "901/00001")
    write_mp4(silent, pattern(20, 1), FPS, None, SR)  # no audio stream at all
    write_mp4(clip_path(root, "val", "901/00002"), pattern(20, 2), FPS, sine(20 * 640, 300), SR)
    tracker = FailureTracker(max_fail_fraction=1.0, min_attempts=1)
    batch = collate_lrs2([LRS2Dataset(LRS2Config(root=str(root)), "val")[i] for i in range(2)])
    tracker.update(batch)
    assert batch["ids"] == ["901/00002"] and batch["audio"].shape == (1, 20 * 640)
    assert batch["failures"] == [(str(silent), f"no audio stream (audio was requested): {silent}")]
    assert (tracker.attempts, tracker.failed) == (2, 1)
    # A video-only model does not need the audio: the clip is read as usual.
    lips = LRS2Dataset(LRS2Config(root=str(root)), "val", load_audio=False)[0]
    assert lips["id"] == "901/00001" and lips["video"].shape == (20, 1, 88, 88) and "audio" not in lips
    expected = reference_roi(pattern(20, 1).astype(np.float64), BOX)
    assert np.abs(lips["video"][:, 0].double().numpy() - expected).mean() < 0.05
