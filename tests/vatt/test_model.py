"""VATT models: gradients reach every parameter, padding invariance, configs and overrides, sizes."""

import pytest
import torch

import vatt
from vatt.losses import VattLoss
from vatt.summary import PAPER_BACKBONE_M, build_meta, count_params, video_backbone_params

SMALL_INPUTS = dict(num_frames=4, image_size=32, audio_samples=1280, vocab_size=50, max_text_len=8)
TINY_ENC = {"encoder.embed_dim": 32, "encoder.depth": 2, "encoder.num_heads": 2}
# reduced sizes for the paper models in tests (architecture kept: towers, positions, heads, sharing)
TEST_OVERRIDES = {
    "vatt_bbs": {**SMALL_INPUTS, **TINY_ENC},
    "vatt_mbs": {**SMALL_INPUTS, **TINY_ENC},
    "vatt_lbs": {**SMALL_INPUTS, **TINY_ENC},
    "vatt_ma_medium": {**SMALL_INPUTS, **TINY_ENC},
    "vatt_tiny": {**SMALL_INPUTS, **TINY_ENC},
    "vatt_test": {},
}


def _batch(cfg, B=3, P=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = min(cfg.max_text_len, 6)
    lengths = torch.randint(1, L + 1, (B, P), generator=g)
    lengths[0, 1] = 0
    return dict(
        video=torch.rand(B, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1,
        audio=torch.rand(B, cfg.audio_samples, generator=g) * 2 - 1,
        text_ids=torch.randint(2, cfg.vocab_size, (B, P, L), generator=g),
        text_lengths=lengths,
    )


def test_every_registered_model_is_covered():
    assert set(vatt.list_models()) == set(TEST_OVERRIDES)


@pytest.mark.parametrize("name", sorted(TEST_OVERRIDES))
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = vatt.create_model(name, **TEST_OVERRIDES[name])
    model.train()
    b = _batch(model.cfg)
    out = model(**b)
    assert out["text_vt"].shape[:2] == (3, 2)
    for k in ("video_va", "video_vt", "audio_va", "text_vt"):
        torch.testing.assert_close(out[k].norm(dim=-1), torch.ones(out[k].shape[:-1]))  # L2-normalised
    loss = VattLoss()(**out, text_lengths=b["text_lengths"])["loss"]
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, missing


def test_shared_encoder_is_one_module_stored_once():
    model = vatt.create_model("vatt_ma_medium", **TEST_OVERRIDES["vatt_ma_medium"])
    enc = model.encoder
    assert model.video_tower.transformer is enc and model.text_tower.transformer is enc
    keys = list(model.state_dict())
    assert any(k.startswith("encoder.blocks.0.") for k in keys)
    assert not any(".encoder." in k for k in keys)  # not duplicated under each tower
    storages = [t.untyped_storage().data_ptr() for t in model.state_dict().values()]
    assert len(storages) == len(set(storages))  # safetensors refuses shared tensors


def _encode_caption(model, ids, lengths):
    return model.encode_text(ids, lengths)["text_vt"]


@pytest.mark.parametrize("name", ["vatt_test", "vatt_ma_medium"])
def test_caption_embeds_the_same_alone_and_in_a_padded_batch(name):
    torch.manual_seed(0)
    model = vatt.create_model(name, **TEST_OVERRIDES[name]).eval()
    short = torch.tensor([[5, 9, 13]])
    alone = _encode_caption(model, short, torch.tensor([3]))
    padded = torch.zeros(2, 8, dtype=torch.long)
    padded[0, :3] = short[0]
    padded[1] = torch.arange(10, 18)
    batch = _encode_caption(model, padded, torch.tensor([3, 8]))
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)
    # whatever sits in the padding does not matter
    padded[0, 3:] = torch.arange(20, 25)
    torch.testing.assert_close(_encode_caption(model, padded, torch.tensor([3, 8]))[0], alone[0], rtol=0, atol=1e-5)
    # ...but a real token does (the test can fail)
    assert (_encode_caption(model, padded, torch.tensor([4, 8]))[0] - alone[0]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["vatt_test", "vatt_ma_medium"])
def test_captions_in_length_groups_embed_and_backpropagate_as_one_batch(name):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (13, 8), generator=g)
    lengths = torch.tensor([8, 1, 4, 7, 2, 8, 3, 3, 6, 5, 6, 8, 2])
    results = []
    for groups in (1, 3):
        torch.manual_seed(0)
        model = vatt.create_model(name, **TEST_OVERRIDES[name], text_length_groups=groups).eval()
        out = model.encode_text(ids, lengths)["text_vt"]
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        results.append((out, {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert ref_grads.keys() == grads.keys() and len(grads) > 5
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-3, atol=1e-5)  # float32 sums in other orders


def test_gradient_checkpointing_gives_the_same_gradients():
    b = _batch(vatt.create_model("vatt_test").cfg)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = vatt.create_model("vatt_test", grad_checkpointing=ckpt).double().train()
        out = model(**{k: v.double() if v.is_floating_point() else v for k, v in b.items()})
        VattLoss()(**out)["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-9, atol=1e-12)


def test_drop_token_keeps_a_shared_subset_in_training_only():
    model = vatt.create_model("vatt_tiny", drop_token=0.5)
    cfg = model.cfg
    video = torch.rand(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    audio = torch.rand(2, cfg.audio_samples)
    t, h, w = cfg.video_grid
    model.train()
    assert model.video_tower.embed(video).shape[1] == t * h * w // 2
    assert model.audio_tower.embed(audio).shape[1] == cfg.audio_tokens // 2
    assert model.video_tower(video)["tokens"].shape[1] == t * h * w // 2
    model.eval()
    assert model.video_tower.embed(video).shape[1] == t * h * w
    # one permutation for the whole batch: feed tokens that carry their own index
    drop = model.video_tower.drop_token.train()
    x = torch.arange(10.0)[None, :, None].expand(4, 10, 3)
    kept = drop(x)
    assert kept.shape == (4, 5, 3) and (kept == kept[:1]).all() and kept[0, :, 0].unique().numel() == 5


def test_video_and_audio_positions_are_resampled_for_other_input_sizes():
    model = vatt.create_model("vatt_test").eval()
    out = model.encode_video(torch.rand(2, 8, 3, 48, 48))  # grid (2, 3, 3) instead of (1, 2, 2)
    assert out["video_va"].shape == (2, 24) and torch.isfinite(out["video_va"]).all()
    assert model.audio_tower(torch.rand(2, 2560))["tokens"].shape == (2, 20, 32)


def test_overrides_are_strict_and_reproducible():
    with pytest.raises(KeyError, match="num_frame"):
        vatt.create_model("vatt_test", num_frame=8)
    with pytest.raises(KeyError, match="video.dept"):
        vatt.create_model("vatt_test", **{"video.dept": 1})
    with pytest.raises(ValueError, match="num_frames"):
        vatt.create_model("vatt_test", num_frames=6)  # not a multiple of the 4-frame voxel
    m = vatt.create_model("vatt_test", video={"depth": 3}, **{"audio.depth": 1, "encoder.dropout": 0.2})
    assert (m.cfg.video.depth, m.cfg.audio.depth, m.cfg.text.depth) == (3, 1, 2)
    assert m.cfg.video.dropout == m.cfg.text.dropout == 0.2
    assert len(m.video_tower.encoder.blocks) == 3
    # (model_name, overrides) rebuild the same architecture, and the same weights under the same seed
    torch.manual_seed(1)
    a = vatt.create_model("vatt_test", num_frames=8, vocab_size=77)
    torch.manual_seed(1)
    b = vatt.create_model(a.model_name, **a.overrides)
    assert a.cfg == b.cfg and a.overrides == {"num_frames": 8, "vocab_size": 77}
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("size", list(PAPER_BACKBONE_M))
def test_video_backbone_sizes_match_table_7_within_2_percent(size):
    ours = video_backbone_params(size) / 1e6
    assert abs(ours / PAPER_BACKBONE_M[size] - 1) < 0.02, (size, ours)


def test_paper_models_use_the_table_7_sizes():
    bbs, mbs, lbs = (build_meta(n) for n in ("vatt_bbs", "vatt_mbs", "vatt_lbs"))
    for model, paper in ((bbs, 87.9), (mbs, 155.0), (lbs, 306.1)):
        assert abs(count_params(model.video_tower) / 1e6 / paper - 1) < 0.02
        assert model.cfg.audio.embed_dim == 768 and model.cfg.text.embed_dim == 512  # Base audio, Small text
    ma = build_meta("vatt_ma_medium")
    shared = count_params(ma.encoder)
    D = 1024  # per layer: qkv 3D^2+3D, proj D^2+D, MLP 4D^2+4D and 4D^2+D, two LNs 4D; final LN 2D
    assert shared == 12 * (12 * D * D + 13 * D) + 2 * D
    # the shared transformer with the video path (tokenizer, positions, AGG, projections) vs the paper's 155M
    assert abs((shared + count_params(ma.video_tower)) / 155.0e6 - 1) < 0.02


def test_frozen_word_embeddings_load_from_files(tmp_path):
    words = ["<pad>", "<unk>", "red", "ball"]
    lines = ["4 3"] + [f"{w} {i}.0 {i + 0.5} -{i}.25" for i, w in enumerate(words)]
    (tmp_path / "w2v.txt").write_text("\n".join(lines) + "\n")
    m = vatt.create_model("vatt_test", vocab_size=4, text_word_dim=3, text_embed_file=str(tmp_path / "w2v.txt"))
    assert m.text_tower.vocab == words
    table = m.text_tower.word_embed.embed.weight
    assert not table.requires_grad and table[2].tolist() == [2.0, 2.5, -2.25]
    torch.save({"weight": torch.randn(4, 3)}, tmp_path / "emb.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    m = vatt.create_model(
        "vatt_test",
        vocab_size=4,
        text_word_dim=3,
        text_embed_file=str(tmp_path / "emb.pt"),
        text_vocab_file=str(tmp_path / "vocab.txt"),
    )
    assert m.text_tower.vocab == words
    with pytest.raises(ValueError, match="vocab_size"):
        vatt.create_model("vatt_test", text_word_dim=3, text_embed_file=str(tmp_path / "w2v.txt"))
