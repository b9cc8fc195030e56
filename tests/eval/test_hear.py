"""HEAR's API on a tiny export's audio tower: shapes, timestamps, batching and the windowing by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vatt
from data.transforms import PreprocessConfig, standardize_audio
from eval.hear import get_scene_embeddings, get_timestamp_embeddings, load_model
from eval.vatt_export import load_vatt_export
from train.export import save_export

SR = 8000
# 0.8 s windows of 6,400 samples (50 tokens of 16 ms), each standardised.
PP = PreprocessConfig(num_frames=8, fps=10.0, image_size=32, resize_size=32, sample_rate=SR, audio_standardize=True)
WINDOW = PP.audio_samples


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    overrides = {"num_frames": PP.num_frames, "image_size": PP.image_size, "audio_samples": WINDOW}
    torch.manual_seed(0)
    model = vatt.create_model("vatt_test", **overrides)
    return save_export(
        tmp_path_factory.mktemp("hear") / "export",
        kind="vatt",
        model_name="vatt_test",
        overrides=overrides,
        state_dict=model.state_dict(),
        preprocess=PP.to_dict(),
    )


def sounds(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """(n, S) different sounds in [-1, 1]: tones of different pitch with noise and a swell."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * SR)) / SR
    rows = [
        0.4 * torch.sin(2 * torch.pi * (220 + 170 * i) * t) * (1 + torch.sin(2 * torch.pi * 0.6 * t)) / 2
        + 0.05 * torch.randn(t.shape, generator=g)
        for i in range(n)
    ]
    return torch.stack(rows).clamp(-1, 1)


def test_model_attributes(export: Path) -> None:
    model = load_model(str(export))
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == SR
    assert model.scene_embedding_size == model.timestamp_embedding_size == 32
    with pytest.raises(ValueError, match="export directory"):
        load_model()


@torch.no_grad()
def test_shapes_and_timestamps_for_1_and_10_seconds(export: Path) -> None:
    model = load_model(str(export))
    lengths = []
    for seconds in (1.0, 10.0):
        audio = sounds(2, seconds)
        scene = get_scene_embeddings(audio, model)
        emb, ts = get_timestamp_embeddings(audio, model)
        T = round(seconds * 1000 / model.hop_ms)  # 50 ms hops: 20 and 200
        assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32
        assert emb.shape == (2, T, model.timestamp_embedding_size) and emb.dtype == torch.float32
        assert ts.shape == (2, T)
        assert bool((ts.diff(dim=1) > 0).all())
        torch.testing.assert_close(ts.diff(dim=1), torch.full((2, T - 1), model.hop_ms))
        assert ts[0, 0].item() == pytest.approx(model.hop_ms / 2)  # the centre of the first hop
        assert ts[0, -1].item() == pytest.approx(seconds * 1000 - model.hop_ms / 2)
        assert torch.isfinite(emb).all() and torch.isfinite(scene).all()
        assert (scene[0] - scene[1]).abs().max() > 1e-3  # different sounds, different embeddings
        lengths.append(T)
    assert lengths[1] > lengths[0]
    # A length that is not a whole number of hops gets a row for its partial last hop.
    emb, ts = get_timestamp_embeddings(sounds(1, 1.03), model)
    assert emb.shape[1] == ts.shape[1] == 21


@torch.no_grad()
def test_a_batch_embeds_like_one_sound_at_a_time(export: Path) -> None:
    model = load_model(str(export), batch_size=3)  # 3 windows per pass: sounds are split across passes
    audio = sounds(3, 2.1)
    scene = get_scene_embeddings(audio, model)
    emb, ts = get_timestamp_embeddings(audio, model)
    for i in range(3):
        one = audio[i : i + 1]
        torch.testing.assert_close(scene[i : i + 1], get_scene_embeddings(one, model), atol=1e-5, rtol=0)
        e1, t1 = get_timestamp_embeddings(one, model)
        torch.testing.assert_close(emb[i : i + 1], e1, atol=1e-5, rtol=0)
        torch.testing.assert_close(ts[i : i + 1], t1)


@torch.no_grad()
def test_embeddings_equal_the_windowing_by_hand(export: Path) -> None:
    model = load_model(str(export))
    tower = load_vatt_export(export).model.audio_tower
    audio = sounds(1, 1.0)[0]  # 8,000 samples: a full window and 1,600 samples zero-padded
    parts = [audio[:WINDOW], audio[WINDOW:]]
    windows = torch.stack([torch.nn.functional.pad(standardize_audio(p), (0, WINDOW - len(p))) for p in parts])
    out = tower(windows)
    weights = torch.tensor([WINDOW, 8000 - WINDOW], dtype=torch.float32)
    expected = (out["pooled"] * weights[:, None]).sum(0) / weights.sum()
    torch.testing.assert_close(get_scene_embeddings(audio[None], model)[0], expected, atol=1e-5, rtol=0)

    emb, _ = get_timestamp_embeddings(audio[None], model)
    # 8,000 samples: 63 tokens of 128 begin in real audio. The last one's centre is at 1,000 ms, past the
    # last hop's end: it still holds real audio and goes to the last row.
    tokens = out["tokens"].reshape(-1, 32)[:63]
    row = ((torch.arange(63) * 16 + 8) // 50).clamp(max=19)
    expected = torch.stack([tokens[row == k].mean(0) for k in range(20)])
    torch.testing.assert_close(emb[0], expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_standardisation_makes_the_level_irrelevant(export: Path) -> None:
    model = load_model(str(export))
    audio = sounds(2, 1.5)
    torch.testing.assert_close(
        get_scene_embeddings(0.25 * audio, model), get_scene_embeddings(audio, model), atol=1e-4, rtol=0
    )


@torch.no_grad()
def test_random_init_and_hop_options(export: Path) -> None:
    audio = sounds(1, 1.0)
    pretrained = get_scene_embeddings(audio, load_model(str(export)))
    random = get_scene_embeddings(audio, load_model(str(export), init="random", seed=1))
    assert random.shape == pretrained.shape and (random - pretrained).abs().max() > 1e-3
    emb, ts = get_timestamp_embeddings(audio, load_model(str(export), hop_ms=25.0))
    assert emb.shape[1] == 40 and ts[0, :2].tolist() == [12.5, 37.5]
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\)"):
        get_scene_embeddings(audio[0], load_model(str(export)))
