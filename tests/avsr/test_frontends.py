"""Front-ends: frame rates from the config, token-to-frame mapping, pretrained weights from files and VATT exports."""

from __future__ import annotations

import math

import pytest
import torch

import avsr
import vatt
from avsr.frontends import (
    ConvAudioFrontend,
    FbankAudioFrontend,
    Wav2Vec2AudioFrontend,
    read_state_dict,
    samples_per_frame,
    tokens_to_frames,
)
from avsr.frontends.audio import split_strides

TINY_W2V = {
    "extractor_mode": "layer_norm",
    "extractor_conv_layer_config": [(16, 10, 5), (16, 4, 4), (16, 2, 2)],  # 80 samples per token
    "extractor_conv_bias": False,
    "encoder_embed_dim": 16,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 4,
    "encoder_pos_conv_groups": 2,
    "encoder_num_layers": 1,
    "encoder_num_heads": 2,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 32,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": True,
    "encoder_layer_drop": 0.0,
}


def test_samples_per_frame_is_derived_and_strides_multiply_to_it():
    assert samples_per_frame(16_000, 25.0) == 640
    assert samples_per_frame(8_000, 25) == 320
    with pytest.raises(ValueError, match="whole number"):
        samples_per_frame(16_000, 30.0)
    for spf in (640, 320, 1920, 441, 7):
        strides = split_strides(spf)
        assert torch.tensor(strides).prod().item() == spf and all(s <= 8 or s == spf for s in strides)
    assert split_strides(640) == (5, 8, 8, 2)
    with pytest.raises(ValueError, match="multiply"):
        ConvAudioFrontend(640, strides=(8, 8, 8))


def test_conv_audio_frontend_gives_one_feature_per_video_frame():
    fe = ConvAudioFrontend(samples_per_frame(8000, 25), channels=8, out_dim=6).eval()
    audio = torch.randn(3, 3200)
    lengths = torch.tensor([3200, 1000, 321])
    x, frames = fe(audio, lengths)
    assert frames.tolist() == [10, 4, 2] and x.shape == (3, 10, 6)
    assert x[1, 4:].abs().sum() == 0 and x[2, 2:].abs().sum() == 0


def test_fbank_frontend_frames_and_mel_peak_of_a_tone():
    import torchaudio

    fe = FbankAudioFrontend(640, 16_000, channels=8, out_dim=6, n_mels=40).eval()
    assert (fe.hop, fe.n_fft) == (160, 512)
    lengths = torch.tensor([16_000, 6_401, 640])
    t = torch.arange(16_000) / 16_000
    audio = torch.stack([torch.sin(2 * math.pi * f * t) for f in (300.0, 1000.0, 3000.0)]).float()
    x, frames = fe(audio, lengths)
    assert frames.tolist() == [25, 11, 1] and x.shape == (3, 25, 6)
    assert x[1, 11:].abs().sum() == 0 and x[2, 1:].abs().sum() == 0
    # Before normalisation the loudest mel bin of each tone is the one whose centre is nearest its frequency.
    spec = torch.log(fe.mel(audio[:, :12_800]) + 1e-6)  # (3, 40, frames)
    centres = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 40, 16_000).argmax(0).float() * 8000 / 256
    for row, f in zip(spec.mean(-1), (300.0, 1000.0, 3000.0)):
        assert (centres[row.argmax()] - f).abs() <= (centres - f).abs().min() + 1e-6
    feats, n = fe.features(audio, lengths)
    assert n.tolist() == [100, 41, 4] and feats.shape == (3, 40, 100)
    real = feats[1, :, :41].double()
    torch.testing.assert_close(real.mean(-1), torch.zeros(40, dtype=torch.float64), atol=1e-5, rtol=0)
    assert feats[1, :, 41:].abs().sum() == 0
    with pytest.raises(ValueError, match="power of two"):
        FbankAudioFrontend(640, 16_000, fbank_per_frame=3)


def test_tokens_to_frames_against_hand_computed_weights():
    tokens = torch.arange(1.0, 7.0, dtype=torch.float64)[None, :, None]  # tokens 1..6, (1, 6, 1)
    # coarse tokens (2 frames each): each token repeated over its frames
    out = tokens_to_frames(tokens, torch.tensor([3]), 2.0, torch.tensor([6]), 1.0)
    assert out[0, :, 0].tolist() == [1, 1, 2, 2, 3, 3]
    # fine tokens (3 per frame): means; the last frame has only tokens 4..5 real -> their mean
    out = tokens_to_frames(tokens, torch.tensor([5]), 1.0, torch.tensor([2]), 3.0)
    assert out[0, :, 0].tolist() == pytest.approx([2.0, 4.5])
    # misaligned hops: frame [0, 1.5) overlaps token 0 fully and token 1 by half -> (1 * 1 + 2 * 0.5) / 1.5
    out = tokens_to_frames(tokens, torch.tensor([6]), 1.0, torch.tensor([4]), 1.5)
    assert out[0, 0, 0].item() == pytest.approx(4 / 3)
    # frames beyond the last real token copy it; frames beyond the length are zero
    out = tokens_to_frames(tokens, torch.tensor([2]), 1.0, torch.tensor([4]), 1.0, max_frames=5)
    assert out[0, :, 0].tolist() == [1, 2, 2, 2, 0]


def test_wav2vec2_weights_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    trained = Wav2Vec2AudioFrontend(640, "custom", TINY_W2V).eval()
    torch.save(trained.model.state_dict(), tmp_path / "w2v.pt")
    torch.manual_seed(1)
    model = avsr.create_model(
        "avsr_test", modalities="a", audio_frontend="wav2vec2", wav2vec2_arch="custom", wav2vec2_kwargs=TINY_W2V
    ).eval()
    audio, lengths = torch.randn(2, 3000), torch.tensor([3000, 2000])
    assert not torch.allclose(model.audio_frontend(audio, lengths)[0], trained(audio, lengths)[0])
    model.load_frontend_state("a", read_state_dict(tmp_path / "w2v.pt"))
    torch.testing.assert_close(model.audio_frontend(audio, lengths)[0], trained(audio, lengths)[0])
    x, frames = trained(audio, lengths)
    assert frames.tolist() == [5, 4] and x.shape == (2, 5, 16)
    with pytest.raises(ValueError, match="do not fit"):
        model.load_frontend_state("a", {"bogus.weight": torch.zeros(1)})
    torch.save([1, 2], tmp_path / "not_a_state_dict.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        read_state_dict(tmp_path / "not_a_state_dict.pt")


def test_wav2vec2_feature_encoder_starts_near_unit_scale():
    """A fresh conv feature encoder keeps speech-level input near unit scale through six layers (kaiming
    normal, as the released wav2vec 2.0); PyTorch's default init would leave it about 1000x smaller."""
    layers = [(64, 10, 5), (64, 3, 2), (64, 3, 2), (64, 3, 2), (64, 2, 2), (64, 2, 2)]
    torch.manual_seed(0)
    frontend = Wav2Vec2AudioFrontend(640, "custom", {**TINY_W2V, "extractor_mode": "group_norm",
                                                     "extractor_conv_layer_config": layers})  # fmt: skip
    audio = 0.1 * torch.randn(4, 16000)
    with torch.no_grad():
        z, _ = frontend.model.feature_extractor(audio, torch.full((4,), 16000))
    assert 0.1 < float(z.pow(2).mean().sqrt()) < 10.0
    for module in frontend.model.feature_extractor.modules():
        if isinstance(module, torch.nn.Conv1d):
            torch.nn.init.kaiming_uniform_(module.weight, a=5**0.5)  # PyTorch's default
    with torch.no_grad():
        z, _ = frontend.model.feature_extractor(audio, torch.full((4,), 16000))
    assert float(z.pow(2).mean().sqrt()) < 0.01


@pytest.mark.parametrize("shared", [False, True], ids=["modality-specific", "modality-agnostic"])
def test_vatt_towers_load_from_a_vatt_state_dict(shared):
    torch.manual_seed(0)
    overrides = {"shared_encoder": True} if shared else {}
    pretrained = vatt.create_model("vatt_test", **overrides)
    sd = pretrained.state_dict()
    torch.manual_seed(1)
    model = avsr.create_model("avsr_test", video_frontend="vatt", audio_frontend="vatt", vatt_overrides=overrides)
    model.load_frontend_state("v", sd)
    model.load_frontend_state("a", sd)
    for k, v in pretrained.video_tower.state_dict().items():
        torch.testing.assert_close(model.video_frontend.tower.state_dict()[k], v)
    for k, v in pretrained.audio_tower.state_dict().items():
        torch.testing.assert_close(model.audio_frontend.tower.state_dict()[k], v)
    if shared:
        for k, v in pretrained.encoder.state_dict().items():
            torch.testing.assert_close(model.video_frontend.encoder.state_dict()[k], v)
            torch.testing.assert_close(model.audio_frontend.encoder.state_dict()[k], v)
    else:
        assert model.video_frontend.encoder is None


def test_vatt_video_frontend_windows_and_tubelets():
    torch.manual_seed(0)
    fe = avsr.create_model("avsr_test", video_frontend="vatt").video_frontend.eval()  # vatt_test: 4-frame clips
    assert fe.window == 4 and fe.patch_time == 4
    video = torch.randn(1, 10, 1, 32, 32)
    with torch.no_grad():
        x, _ = fe(video, torch.tensor([10]))
        first, _ = fe(video[:, :4], torch.tensor([4]))
    assert x.shape == (1, 10, fe.out_dim)
    torch.testing.assert_close(x[:, :4], first)  # window 0 only sees frames 0..3
    torch.testing.assert_close(x[0, 0], x[0, 3])  # one tubelet -> the same feature on its 4 frames
    assert not torch.allclose(x[0, 3], x[0, 4])


def test_vatt_audio_frontend_resamples_and_maps_patches_to_frames():
    torch.manual_seed(0)
    fe = avsr.create_model("avsr_test", audio_frontend="vatt").audio_frontend.eval()
    assert fe.tower_spf == 1920 and fe.window >= 1  # 640 samples at 16 kHz = 1920 at 48 kHz = 15 patches
    audio = 0.1 * torch.randn(2, 6400)
    with torch.no_grad():
        x, frames = fe(audio, torch.tensor([6400, 3000]))
    assert frames.tolist() == [10, 5] and x.shape == (2, 10, fe.out_dim)
    assert x[1, 5:].abs().sum() == 0 and x[1, :5].abs().sum() > 0
