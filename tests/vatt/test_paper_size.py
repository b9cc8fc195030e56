"""VATT-MBS at the paper's input sizes on the CPU: 32x224x224 video, 153,600 audio samples, 16 tokens."""

import pytest
import torch

import vatt


@pytest.mark.slow
def test_mbs_forward_at_paper_sizes_and_drop_token_halves_tokens():
    torch.manual_seed(0)
    model = vatt.create_model("vatt_mbs").eval()
    cfg = model.cfg
    assert (cfg.num_frames, cfg.image_size, cfg.audio_samples, cfg.max_text_len) == (32, 224, 153_600, 16)
    video = torch.rand(1, 32, 3, 224, 224) * 2 - 1
    audio = torch.rand(1, 153_600) * 2 - 1
    ids = torch.randint(2, cfg.vocab_size, (1, 1, 16))
    with torch.inference_mode():
        out = model(video, audio, ids, torch.tensor([[16]]))
        assert out["video_va"].shape == (1, 512) and out["video_vt"].shape == (1, 256)
        assert out["audio_va"].shape == (1, 512) and out["text_vt"].shape == (1, 1, 256)
        assert all(torch.isfinite(v).all() for v in out.values())
        assert model.video_tower.embed(video).shape == (1, 1568, 1024)
        assert model.audio_tower.embed(audio).shape == (1, 1200, 768)
        model.train()  # DropToken (keep 0.5) acts in training only
        assert model.video_tower.embed(video).shape == (1, 784, 1024)
        assert model.audio_tower.embed(audio).shape == (1, 600, 768)
