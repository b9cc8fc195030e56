"""Features from the towers of an export: each checked against the same computation done by hand."""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import eval.downstream.towers as towers_module
import vatt
from data.collate import DataFailureError
from data.downstream.task import Example
from data.media import MediaReader, load_audio
from data.synth.mediawriter import write_mp4
from data.tokenizer import train_tokenizer
from data.transforms import PreprocessConfig, VideoTransform, standardize_audio
from eval.downstream.towers import load_tower, num_rows
from eval.vatt_export import load_vatt_export
from tests.conftest import save_tiny_vatt_export

FPS = 10.0
SR = 8000  # the export's sample rate; the audio files are written at 16 kHz and resampled
# 16 frames (4 temporal tokens of 4 frames), 40x48 frames resized to a 36 shorter side, then cut to 32x32;
# 1.6 s windows of 12,800 samples (100 audio tokens of 16 ms), standardised per window.
PP = PreprocessConfig(
    num_frames=16, fps=FPS, image_size=32, resize_size=36, sample_rate=SR, max_text_len=8, audio_standardize=True
)
WINDOW = PP.audio_samples
TEXTS = ["a red square moving", "a green circle", "two blue squares", "the red one again"]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


def tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A chirp with noise and a changing loudness, so that windows and hops differ from each other."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave_ = 0.3 * np.sin(2 * np.pi * (200 + 150 * t) * t) * (1 + 0.8 * np.sin(2 * np.pi * 0.7 * t))
    return (wave_ / 1.8 + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@dataclass
class Files:
    export: Path
    ma_export: Path  # VATT-MA: one shared transformer
    video: Path  # 3.2 s, 40x48, a square moving right at a frame a step
    video2: Path
    short_wav: Path  # 0.5 s: less than one window
    long_wav: Path  # 4.0 s: two windows and a half
    broken: Path
    missing: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("towers")
    tok = train_tokenizer(TEXTS, 30, root / "tok.model")
    videos = []
    for i in range(2):
        frames = np.zeros((32, 40, 48, 3), np.uint8)
        frames[:] = 40 + 30 * i
        for k in range(32):
            frames[k, 8 + i * 10 : 24 + i * 10, k : k + 16] = (220, 60 + 5 * k, 30 + 120 * i)
        videos.append(write_mp4(root / f"v{i}.mp4", frames, FPS, tone(3.2, SR, i) * 0.5, SR))
    broken = root / "broken.mp4"
    broken.write_bytes(b"this is not a media file" * 50)
    return Files(
        export=save_tiny_vatt_export(root / "export", 0, tokenizer=tok, preprocess=PP),
        ma_export=save_tiny_vatt_export(root / "ma_export", 0, tokenizer=tok, preprocess=PP, shared_encoder=True),
        video=videos[0],
        video2=videos[1],
        short_wav=write_wav(root / "short.wav", tone(0.5, 16000, 2), 16000),
        long_wav=write_wav(root / "long.wav", tone(4.0, 16000, 3), 16000),
        broken=broken,
        missing=root / "missing.wav",
    )


# -- by hand ---------------------------------------------------------------------------------------


def frames_by_hand(path: Path, start: float, end: float) -> torch.Tensor:
    """(1, T, C, H, W): frame k is the one on screen at the centre of the k-th of T equal slices of
    [start, end], each read with its own seek, then the eval transform."""
    step = (end - start) / PP.num_frames
    frames = []
    for k in range(PP.num_frames):
        with MediaReader(path) as reader:  # a reader decodes one clip
            frames.append(reader.read_video(start + (k + 0.5) * step, 1, FPS, PP.resize_size))
    return VideoTransform(PP, train=False)(torch.cat(frames))[None]


def windows_by_hand(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive WINDOW-sample windows (k, W) of a whole file, each standardised over its real
    samples and zero-padded, and the real samples of each (k,)."""
    audio = load_audio(path, SR, None).clamp(-1, 1)
    parts = list(audio.split(WINDOW))
    lengths = torch.tensor([len(p) for p in parts], dtype=torch.float32)
    padded = [torch.nn.functional.pad(standardize_audio(p), (0, WINDOW - len(p))) for p in parts]
    return torch.stack(padded), lengths


# -- clip features ---------------------------------------------------------------------------------


@torch.no_grad()
def test_video_clip_features_equal_hand_computation(files: Files) -> None:
    model = load_vatt_export(files.export).model
    tower = load_tower(files.export, "video")
    segment = Example(label=0, path=files.video, start=0.25, end=2.25)
    whole = Example(label=1, path=files.video)  # 3.2 s: frames at the centres of 0.2 s slices

    agg, kept = tower.clip_features([segment, whole], progress=False)
    mean, _ = tower.clip_features([segment, whole], pool="mean", progress=False)

    assert kept.tolist() == [0, 1] and agg.shape == (2, tower.dim) == (2, 32)
    for row, (start, end) in enumerate([(0.25, 2.25), (0.0, 3.2)]):
        out = model.video_tower(frames_by_hand(files.video, start, end))
        torch.testing.assert_close(agg[row], out["pooled"][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(mean[row], out["tokens"][0].mean(dim=0), atol=1e-5, rtol=0)
    # The frames are spread over the segment: reading 16 frames at the trained 10 fps from its start differs.
    with MediaReader(files.video) as reader:
        naive = VideoTransform(PP, train=False)(reader.read_video(0.25, 16, FPS, PP.resize_size))[None]
    assert (model.video_tower(naive)["pooled"][0] - agg[0]).abs().max() > 1e-3


@torch.no_grad()
def test_sparse_frames_are_read_one_seek_each_and_equal_the_dense_read(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    tower = load_tower(files.export, "video")
    examples = [Example(label=0, path=files.video, start=0.25, end=2.25), Example(label=1, path=files.video)]
    dense, _ = tower.clip_features(examples, progress=False)
    monkeypatch.setattr(towers_module, "_SPARSE_GAP", 0.0)  # every read goes frame by frame
    sparse, _ = tower.clip_features(examples, progress=False)
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=0)


@torch.no_grad()
def test_audio_clip_features_average_windows_weighted_by_real_samples(files: Files) -> None:
    model = load_vatt_export(files.export).model
    tower = load_tower(files.export, "audio")
    feats, kept = tower.clip_features(
        [Example(label=0, path=files.long_wav), Example(label=1, path=files.short_wav)], progress=False
    )
    assert kept.tolist() == [0, 1]

    windows, lengths = windows_by_hand(files.long_wav)
    assert lengths.tolist() == [WINDOW, WINDOW, WINDOW // 2]  # 4.0 s = 2.5 windows of 1.6 s
    per_window = model.audio_tower(windows)["pooled"]  # (3, D)
    expected = (per_window * lengths[:, None]).sum(0) / lengths.sum()
    torch.testing.assert_close(feats[0], expected, atol=1e-5, rtol=0)
    assert (feats[0] - per_window.mean(0)).abs().max() > 1e-4  # the half window counts half

    short, lengths = windows_by_hand(files.short_wav)  # one window, zero-padded after 0.5 s
    assert lengths.tolist() == [SR // 2]
    torch.testing.assert_close(feats[1], model.audio_tower(short)["pooled"][0], atol=1e-5, rtol=0)


@torch.no_grad()
def test_audio_mean_pool_leaves_out_padding_tokens(files: Files) -> None:
    model = load_vatt_export(files.export).model
    tower = load_tower(files.export, "audio")
    feats, _ = tower.clip_features([Example(label=0, path=files.short_wav)], pool="mean", progress=False)
    short, _ = windows_by_hand(files.short_wav)
    tokens = model.audio_tower(short)["tokens"][0]  # (100, D); 0.5 s = 4000 samples = 31.25 tokens of 128
    torch.testing.assert_close(feats[0], tokens[:32].mean(0), atol=1e-5, rtol=0)


@torch.no_grad()
def test_text_clip_features_equal_text_tower(files: Files) -> None:
    exp = load_vatt_export(files.export)
    tower = load_tower(files.export, "text")
    examples = [Example(label=0, text=TEXTS[0]), Example(label=1, text="   "), Example(label=1, text=TEXTS[2])]
    feats, kept = tower.clip_features(examples, progress=False, max_fail_fraction=0.5)
    assert kept.tolist() == [0, 2]  # blank text is skipped like a bad file
    ids, lengths = exp.tokenizer.encode_batch([TEXTS[0], TEXTS[2]], PP.max_text_len)
    torch.testing.assert_close(feats, exp.model.text_tower(ids, lengths)["pooled"], atol=1e-5, rtol=0)


def test_undecodable_files_are_skipped_and_counted(files: Files) -> None:
    tower = load_tower(files.export, "video")
    examples = [
        Example(label=0, path=files.video),
        Example(label=1, path=files.broken),
        Example(label=2, path=files.missing),
        Example(label=3, path=files.video2),
    ]
    feats, kept = tower.clip_features(examples, batch_size=3, progress=False, max_fail_fraction=0.5)
    assert kept.tolist() == [0, 3] and feats.shape == (2, tower.dim)
    labels = torch.tensor([ex.label for ex in examples])[kept]  # how a caller drops the skipped rows
    assert labels.tolist() == [0, 3]
    assert [path for path, _ in tower.last_failures] == [str(files.broken), str(files.missing)]
    alone, _ = tower.clip_features([examples[3]], progress=False)
    torch.testing.assert_close(feats[1], alone[0], atol=1e-5, rtol=0)  # skipping does not shift rows

    frames = tower.frame_features(examples, hop=0.5, progress=False, max_fail_fraction=0.5)
    assert frames.kept.tolist() == [0, 3] and len(frames.features) == 2
    with pytest.raises(DataFailureError, match="2 of 4 clips failed"):
        tower.clip_features(examples, progress=False)  # the default budget is 1%
    audio = load_tower(files.export, "audio")
    feats, kept = audio.clip_features(
        [Example(label=0, path=files.broken), Example(label=0, path=files.long_wav)],
        progress=False,
        max_fail_fraction=0.5,
    )
    assert kept.tolist() == [1] and len(audio.last_failures) == 1


# -- frame features --------------------------------------------------------------------------------


@torch.no_grad()
def test_video_frame_features_are_means_of_the_right_temporal_tokens(files: Files) -> None:
    model = load_vatt_export(files.export).model
    tower = load_tower(files.export, "video")
    ex = Example(label=-1, path=files.video, start=0.25, end=2.25)  # 2 s: 4 temporal tokens of 0.5 s
    tokens = model.video_tower(frames_by_hand(files.video, 0.25, 2.25))["tokens"][0]  # (t*h*w, D)
    temporal = tokens.reshape(4, 4, -1).mean(dim=1)  # (t, D): average over the 2x2 spatial grid

    coarse = tower.frame_features([ex], hop=1.0, progress=False).features[0]
    assert coarse.shape == (2, tower.dim)
    torch.testing.assert_close(coarse[0], temporal[:2].mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(coarse[1], temporal[2:].mean(0), atol=1e-5, rtol=0)

    # hop 0.3 s: 7 rows (the last partial); token centres 0.25, 0.75, 1.25, 1.75 s fall in rows 0, 2, 4, 5;
    # rows holding no centre take the token nearest to their middle.
    fine = tower.frame_features([ex], hop=0.3, progress=False).features[0]
    assert fine.shape[0] == 7 == num_rows(2.0, 0.3)
    torch.testing.assert_close(fine, temporal[[0, 0, 1, 2, 2, 3, 3]], atol=1e-5, rtol=0)


@torch.no_grad()
def test_audio_frame_features_are_means_of_the_tokens_in_each_hop(files: Files) -> None:
    model = load_vatt_export(files.export).model
    tower = load_tower(files.export, "audio")
    out = tower.frame_features(
        [Example(label=-1, path=files.long_wav), Example(label=-1, path=files.long_wav, start=0.5, end=1.23)],
        hop=0.05,
        progress=False,
    )
    whole, part = out.features
    assert whole.shape == (80, tower.dim)  # ceil(4.0 / 0.05)
    assert part.shape[0] == 15 == math.ceil(0.73 / 0.05)

    windows, _ = windows_by_hand(files.long_wav)
    tokens = model.audio_tower(windows)["tokens"].reshape(-1, tower.dim)[:250]  # 32,000 samples = 250 tokens
    centres_ms = torch.arange(250) * 16 + 8  # 128 samples at 8 kHz = 16 ms
    expected = torch.stack([tokens[(centres_ms // 50) == k].mean(0) for k in range(80)])
    torch.testing.assert_close(whole, expected, atol=1e-5, rtol=0)


def test_frame_row_count_rule() -> None:
    assert [num_rows(d, 0.5) for d in (0.1, 0.5, 0.51, 1.6, 2.0)] == [1, 1, 2, 4, 4]
    assert num_rows(1.6, 0.4) == 4  # 1.6 / 0.4 is 4.000000000000001 in floating point


# -- initialisation --------------------------------------------------------------------------------


def _params(tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in tower.named_parameters()}


@pytest.mark.parametrize("which", ["export", "ma_export"])
def test_random_init_is_the_same_architecture_drawn_from_the_seed(files: Files, which: str) -> None:
    export = getattr(files, which)
    pretrained = _params(load_tower(export, "audio"))
    state = torch.get_rng_state()
    first = _params(load_tower(export, "audio", init="random", seed=3))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    again = _params(load_tower(export, "audio", init="random", seed=3))
    other = _params(load_tower(export, "audio", init="random", seed=4))

    assert {k: v.shape for k, v in first.items()} == {k: v.shape for k, v in pretrained.items()}
    assert all(torch.equal(first[k], again[k]) for k in first)
    for different in (pretrained, other):
        assert any(not torch.equal(first[k], different[k]) for k in first if first[k].numel() > 1)
    if which == "ma_export":
        assert any(k.startswith("shared.") for k in first)  # the shared transformer belongs to the tower
    # The twin is exactly create_model under manual_seed(seed), as a user would build it.
    overrides = load_vatt_export(export).model.overrides
    torch.manual_seed(3)
    by_hand = vatt.create_model("vatt_test", **overrides)
    hand = dict(by_hand.audio_tower.named_parameters())
    assert all(torch.equal(first[f"net.{k}"], v) for k, v in hand.items())


@torch.no_grad()
def test_random_features_differ_from_pretrained_and_across_seeds(files: Files) -> None:
    ex = [Example(label=0, path=files.long_wav)]
    pre = load_tower(files.export, "audio").clip_features(ex, progress=False).features
    r0 = load_tower(files.export, "audio", init="random", seed=0).clip_features(ex, progress=False).features
    r0b = load_tower(files.export, "audio", init="random", seed=0).clip_features(ex, progress=False).features
    r1 = load_tower(files.export, "audio", init="random", seed=1).clip_features(ex, progress=False).features
    assert torch.equal(r0, r0b)
    assert (r0 - r1).abs().max() > 1e-3
    # The export was drawn from seed 0 too, but by another path: random init need not equal it.
    assert (pre - r1).abs().max() > 1e-3


@torch.no_grad()
def test_shared_encoder_tower_equals_the_models_own(files: Files) -> None:
    exp = load_vatt_export(files.ma_export)
    tower = load_tower(files.ma_export, "audio")
    feats, _ = tower.clip_features([Example(label=0, path=files.short_wav)], progress=False)
    short, _ = windows_by_hand(files.short_wav)
    torch.testing.assert_close(feats[0], exp.model.audio_tower(short)["pooled"][0], atol=1e-5, rtol=0)


# -- fine-tuning path ------------------------------------------------------------------------------


@pytest.mark.parametrize(("which", "modality"), [("export", "video"), ("ma_export", "audio")])
def test_forward_batch_reaches_every_parameter(files: Files, which: str, modality: str) -> None:
    tower = load_tower(getattr(files, which), modality)
    tower.train()
    path = files.video if modality == "video" else files.long_wav
    dataset = tower.dataset([Example(label=0, path=path), Example(label=1, path=files.video2)], train=True)
    batch = tower.collate([dataset[0], dataset[1]])
    if modality == "audio":
        assert batch["audio"].shape == (2, WINDOW)  # training takes one random window per example
    out = tower.forward_batch(batch)
    assert out.shape == (2, tower.dim)
    out.square().sum().backward()
    missing = [n for n, p in tower.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing
    # Feature extraction runs in eval mode and gives the mode back.
    tower.clip_features([Example(label=0, path=path)], progress=False)
    assert tower.training
