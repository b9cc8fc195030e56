"""AVSR model invariants: gradients everywhere, padding invariance, modality handling, freezing, registry."""

from __future__ import annotations

import pytest
import torch
import torchaudio

import avsr
from avsr.decoding import beam_search, greedy_ctc
from avsr.encoder import conformer_layer_forward
from avsr.fusion import Fusion

TINY_W2V = {
    "extractor_mode": "layer_norm",
    "extractor_conv_layer_config": [(16, 10, 5), (16, 4, 4), (16, 4, 4), (16, 2, 2)],  # 160 samples per token
    "extractor_conv_bias": False,
    "encoder_embed_dim": 32,
    "encoder_projection_dropout": 0.0,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 2,
    "encoder_num_heads": 2,
    "encoder_attention_dropout": 0.0,
    "encoder_ff_interm_features": 64,
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.0,
    "encoder_layer_norm_first": True,
    "encoder_layer_drop": 0.0,
    "aux_num_out": None,
}

VARIANTS = {
    "av-conformer": {},
    "a-transformer": {"modalities": "a", "encoder": "transformer"},
    "a-fbank": {"modalities": "a", "audio_frontend": "fbank", "audio_mels": 20},
    "v-conformer": {"modalities": "v"},
    "av-vatt-towers": {"video_frontend": "vatt", "audio_frontend": "vatt"},
    "a-wav2vec2": {
        "modalities": "a",
        "audio_frontend": "wav2vec2",
        "wav2vec2_arch": "custom",
        "wav2vec2_kwargs": TINY_W2V,
    },
}


def build(variant: str, **kw) -> avsr.AvsrModel:
    torch.manual_seed(0)
    return avsr.create_model("avsr_test", vocab_size=12, **VARIANTS[variant], **kw)


def _inputs_for(model, inputs):
    m = model.cfg.modalities
    return {
        k: v for k, v in inputs.items() if (k.startswith("video") and "v" in m) or (k.startswith("audio") and "a" in m)
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parameter_gets_a_gradient(variant, inputs_fn):
    model = build(variant, audio_drop_prob=0.0, video_drop_prob=0.0).train()
    inputs = _inputs_for(model, inputs_fn([6, 4], seed=2))
    targets = torch.tensor([[1, 2, 3], [4, 5, 0]])
    tl = torch.tensor([3, 2])
    out = model(**inputs, targets=targets, target_lengths=tl)
    avsr.HybridLoss()(**out, targets=targets, target_lengths=tl)["loss"].backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, missing


def test_absent_stream_gets_no_gradient_and_the_rest_does(inputs_fn):
    model = build("av-conformer").train()
    inputs = inputs_fn([6, 4], seed=2)
    targets, tl = torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2])
    out = model(
        audio=inputs["audio"], audio_lengths=inputs["audio_lengths"], targets=targets, target_lengths=tl, modality="a"
    )
    avsr.HybridLoss()(**out, targets=targets, target_lengths=tl)["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("video_frontend.", "fusion.video_norm.")):  # the absent stream's own layers
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_padding_invariance_encode_and_decode(variant, inputs_fn, take_fn):
    """Each utterance encodes and decodes the same alone and inside a batch padded with noise."""
    model = build(variant).eval()
    frames = [9, 6, 4]
    inputs = inputs_fn(frames, seed=3)
    with torch.no_grad():
        batch = model.encode(**_inputs_for(model, inputs))
        hyps = beam_search(model, batch, beam_size=3, nbest=2)
        greedy = greedy_ctc(batch["ctc_log_probs"], batch["enc_lengths"])
        for i, f in enumerate(frames):
            alone = model.encode(**_inputs_for(model, take_fn(inputs, i)))
            assert alone["enc_lengths"].item() == batch["enc_lengths"][i].item() == f
            torch.testing.assert_close(batch["enc_out"][i, :f], alone["enc_out"][0], atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(batch["ctc_log_probs"][i, :f], alone["ctc_log_probs"][0], atol=2e-4, rtol=1e-4)
            assert greedy_ctc(alone["ctc_log_probs"], alone["enc_lengths"])[0] == greedy[i]
            single = beam_search(model, alone, beam_size=3, nbest=2)[0]
            assert [h.tokens for h in single] == [h.tokens for h in hyps[i]]


def test_modality_argument_zeroes_the_stream_like_modality_dropout():
    torch.manual_seed(0)
    fusion = Fusion(8, 6, 16, 32, dropout=0.0, audio_drop_prob=1.0, video_drop_prob=0.0).train()
    v, a = torch.randn(3, 5, 8), torch.randn(3, 5, 6)
    torch.testing.assert_close(fusion(v, a), fusion(v, None))  # training drop of audio == inference "v"
    fusion.audio_drop_prob, fusion.video_drop_prob = 0.0, 1.0
    torch.testing.assert_close(fusion(v, a), fusion(None, a))
    fusion.eval()  # no dropout at inference: both streams count
    assert not torch.allclose(fusion(v, a), fusion(v, None))


def test_modality_dropout_rates():
    torch.manual_seed(0)
    fusion = Fusion(4, 4, 4, 4, audio_drop_prob=0.3, video_drop_prob=0.2).train()
    keep_v, keep_a = fusion._keep(20000, torch.device("cpu"), True, True)
    assert (1 - keep_a).mean().item() == pytest.approx(0.3, abs=0.015)
    assert (1 - keep_v).mean().item() == pytest.approx(0.2, abs=0.015)
    assert ((keep_a == 0) & (keep_v == 0)).sum() == 0  # never both


def test_modality_errors(inputs_fn):
    model = build("a-transformer")
    with pytest.raises(ValueError, match="not available"):
        model.encode(modality="av")
    with pytest.raises(ValueError, match="needs audio"):
        model.encode(modality="a")


def test_frozen_frontend_gets_no_gradient_and_keeps_its_statistics(inputs_fn):
    model = build("av-conformer").train()
    model.set_frontend_frozen(True, "v")
    model.train()  # a training loop calls train() again; the frozen front-end must stay in eval mode
    assert not model.video_frontend.training and model.audio_frontend.training
    stats = model.video_frontend.stem_norm.running_mean.clone()
    inputs = inputs_fn([5, 4], seed=4)
    targets, tl = torch.tensor([[1, 2], [3, 4]]), torch.tensor([2, 2])
    out = model(**inputs, targets=targets, target_lengths=tl)
    avsr.HybridLoss()(**out, targets=targets, target_lengths=tl)["loss"].backward()
    assert all(p.grad is None for p in model.video_frontend.parameters())
    assert all(p.grad is not None for p in model.audio_frontend.parameters())
    torch.testing.assert_close(model.video_frontend.stem_norm.running_mean, stats)
    model.set_frontend_frozen(False)
    assert model.video_frontend.training and all(p.requires_grad for p in model.parameters())


def test_incremental_decoder_equals_teacher_forcing():
    torch.manual_seed(0)
    dec = build("av-conformer").decoder.eval()
    b, beams, t, l = 2, 3, 7, 5
    memory, mem_len = torch.randn(b, t, 32), torch.tensor([7, 4])
    tokens = torch.randint(0, 12, (b * beams, l))
    with torch.no_grad():
        full = dec(tokens, memory.repeat_interleave(beams, 0), mem_len.repeat_interleave(beams)).log_softmax(-1)
        state = dec.init_state(memory, mem_len, beams=beams)
        steps = []
        for i in range(l):
            lp, state = dec.step(tokens[:, i], state)
            steps.append(lp)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_conformer_loop_equals_torchaudio_without_padding():
    torch.manual_seed(0)
    conformer = torchaudio.models.Conformer(32, 4, 64, 2, 5).eval()
    x, lengths = torch.randn(3, 9, 32), torch.tensor([9, 9, 9])
    want, _ = conformer(x, lengths)
    got = x.transpose(0, 1)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    for layer in conformer.conformer_layers:
        got = conformer_layer_forward(layer, got, pad)
    torch.testing.assert_close(got.transpose(0, 1), want)
    # and with padding, torchaudio's own forward is not padding-invariant (why the loop exists)
    padded = torch.cat([x[:1, :6], 5 * torch.randn(1, 3, 32)], 1)
    a, _ = conformer(torch.cat([padded, x[1:2]]), torch.tensor([6, 9]))
    b, _ = conformer(x[:1, :6], torch.tensor([6]))
    assert not torch.allclose(a[:1, :6], b, atol=1e-4)


def test_registry_builds_every_model_and_rebuilds_from_name_and_overrides(tmp_path):
    from safetensors.torch import load_file, save_file

    assert {"avsr_conformer_small", "avsr_conformer_base", "avsr_transformer_tiny", "avsr_test"} <= set(
        avsr.list_models()
    )
    for name in avsr.list_models():
        m = avsr.create_model(name, vocab_size=50)
        assert m.cfg.vocab_size == 50 and m.model_name == name
        assert m.ctc_head.out_features == 50 and m.sos == m.eos == 49
    m = avsr.create_model("avsr_test", vocab_size=20, modalities="v", encoder="transformer")
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))  # no shared storage
    again = avsr.create_model(m.model_name, **m.overrides)
    again.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    assert again.cfg == m.cfg
    with pytest.raises(KeyError, match="'embed_dimm'"):
        avsr.create_model("avsr_test", embed_dimm=3)
    with pytest.raises(ValueError, match="video_frontend"):
        avsr.create_model("avsr_test", video_frontend="resnet50")


@pytest.mark.parametrize("source_variant, stream", [("a-transformer", "a"), ("v-conformer", "v")])
def test_a_model_started_from_a_unimodal_one_computes_what_that_one_computes(source_variant, stream, inputs_fn):
    source = build(source_variant).eval()
    torch.manual_seed(1)
    target = avsr.create_model("avsr_test", vocab_size=12, encoder=source.cfg.encoder).eval()  # modalities "av"
    left = target.load_avsr_state(source.state_dict())
    other = "video" if stream == "a" else "audio"
    assert left and all(k.startswith((f"{other}_frontend.", f"fusion.{other}_norm.")) for k in left)
    inputs = inputs_fn([5, 4], seed=2)
    with torch.no_grad():
        ref = source.encode(**_inputs_for(source, inputs))
        out = target.encode(**inputs)  # both streams: the new one must not change anything yet
    for i, n in enumerate(inputs["video_lengths"].tolist()):
        torch.testing.assert_close(out["enc_out"][i, :n], ref["enc_out"][i, :n])
        torch.testing.assert_close(out["ctc_log_probs"][i, :n], ref["ctc_log_probs"][i, :n])
    # and the new stream's columns are there to learn: a gradient reaches them
    target.train()
    target.fusion.audio_drop_prob = target.fusion.video_drop_prob = 0.0
    out = target(**inputs, targets=torch.tensor([[1, 2], [3, 4]]), target_lengths=torch.tensor([2, 2]))
    avsr.HybridLoss()(**out, targets=torch.tensor([[1, 2], [3, 4]]), target_lengths=torch.tensor([2, 2]))[
        "loss"
    ].backward()
    assert target.fusion.mlp[0].weight.grad[:, target.fusion.columns(other[0])].abs().sum() > 0


def test_starting_from_a_model_of_other_sizes_names_the_mismatch():
    source = avsr.create_model("avsr_test", vocab_size=13, modalities="a")
    target = avsr.create_model("avsr_test", vocab_size=12)
    with pytest.raises(ValueError, match="ctc_head.weight: shape"):
        target.load_avsr_state(source.state_dict())
