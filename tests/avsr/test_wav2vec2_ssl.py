"""wav2vec 2.0 pretraining objective: loss terms against float64 references, masks, distractors, quantiser,
and a tiny torchaudio backbone that trains, reaches every parameter and loads back as an AVSR front-end."""

from __future__ import annotations

import math

import pytest
import torch

from avsr.frontends.audio import Wav2Vec2AudioFrontend
from avsr.ssl.wav2vec2 import (
    GumbelQuantizer,
    Wav2Vec2Loss,
    Wav2Vec2Pretrain,
    Wav2Vec2SslConfig,
    compute_mask,
    contrastive_logits,
    diversity_penalty,
    frontend_state_dict,
    negative_steps,
    sample_negatives,
)

SPF = 640
TINY = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [(32, 10, 5), (32, 3, 2), (32, 3, 2)],  # 20 samples per step
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
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.0,
}
TINY_SSL = Wav2Vec2SslConfig(codebook_size=16, codevector_dim=16, num_negatives=10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: one thread avoids contention with whatever else shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tone_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four utterances of four steady tones each, padded with noise. The tones are multiples of 800 Hz, so
    every 20-sample step of a tone sees the same waveform: a masked step's code is predictable from its
    unmasked neighbours, while distractors from the other tones are not that code."""
    g = gen(1)
    B, S = 4, 1600
    t = torch.arange(S) / 16000
    audio = torch.zeros(B, S)
    seg = S // 4
    for b in range(B):
        for s in range(4):
            f = 800.0 * float(torch.randint(1, 10, (1,), generator=g))
            audio[b, s * seg : (s + 1) * seg] = torch.sin(2 * math.pi * f * t[s * seg : (s + 1) * seg])
    audio += 0.01 * torch.randn(B, S, generator=g)
    lengths = torch.tensor([1600, 1500, 1300, 1200])
    for b, n in enumerate(lengths.tolist()):
        audio[b, n:] = 3.0 * torch.randn(S - n, generator=g)  # padding garbage must not matter
    return audio, lengths


def build(cfg: Wav2Vec2SslConfig, seed: int = 0) -> tuple[Wav2Vec2AudioFrontend, Wav2Vec2Pretrain, Wav2Vec2Loss]:
    torch.manual_seed(seed)
    frontend = Wav2Vec2AudioFrontend(SPF, "custom", TINY)
    model = Wav2Vec2Pretrain(frontend.model, cfg)
    loss = Wav2Vec2Loss(cfg.logit_temp, cfg.diversity_weight, cfg.feature_pen_weight)
    return frontend, model, loss


# ---------------------------------------------------------------- loss terms


def reference_contrastive(context, targets, negatives, mask, kappa: float, skip_identical: bool = True) -> float:
    """Eq. 3 with explicit loops in float64; distractors equal to the positive are left out of Q_t."""
    total, count = 0.0, 0
    B, T = mask.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            c, q = context[b, t].double(), targets[b, t].double()

            def sim(u: torch.Tensor, c: torch.Tensor = c) -> float:
                return float(u @ c) / (math.sqrt(float(u @ u)) * math.sqrt(float(c @ c))) / kappa

            scores = [sim(q)]
            for k in range(negatives.shape[2]):
                n = negatives[b, t, k].double()
                if not (skip_identical and torch.equal(n, q)):
                    scores.append(sim(n))
            top = max(scores)
            lse = top + math.log(sum(math.exp(s - top) for s in scores))
            total += lse - scores[0]
            count += 1
    return total / count


def loss_inputs(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = gen(seed)
    B, T, K, d, G, V = 3, 12, 5, 8, 2, 7
    mask = compute_mask(torch.tensor([12, 9, 5]), T, 0.2, 3, g)
    targets = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    negatives = sample_negatives(targets, mask, K, g)
    # plant distractors identical to their positive: they must leave the denominator
    negatives[0, mask[0].nonzero()[0, 0], 1] = targets[0, mask[0].nonzero()[0, 0]]
    negatives[1, mask[1].nonzero()[1, 0], :3] = targets[1, mask[1].nonzero()[1, 0]]
    return {
        "context": torch.randn(B, T, d, generator=g, dtype=torch.float64).to(dtype),
        "targets": targets.to(dtype),
        "negatives": negatives.to(dtype),
        "mask": mask,
        "probs": torch.randn(G, V, generator=g, dtype=torch.float64).softmax(-1).to(dtype),
        "features_pen": torch.tensor(0.3, dtype=dtype),
    }


def test_contrastive_matches_float64_reference_with_identical_negatives_masked():
    x = loss_inputs(torch.float64)
    ref = reference_contrastive(x["context"], x["targets"], x["negatives"], x["mask"], 0.1)
    out = Wav2Vec2Loss(logit_temp=0.1)(**x)
    assert float(out["loss_contrastive"]) == pytest.approx(ref, abs=1e-6)
    # the planted duplicates matter: scored as distractors the loss would be larger
    kept = reference_contrastive(x["context"], x["targets"], x["negatives"], x["mask"], 0.1, skip_identical=False)
    assert kept - ref > 1e-3
    # float32 inputs are computed in float32 and agree closely
    x32 = loss_inputs(torch.float32)
    out32 = Wav2Vec2Loss(logit_temp=0.1)(**x32)
    assert float(out32["loss_contrastive"]) == pytest.approx(ref, abs=1e-5)


def test_distractors_as_steps_score_as_the_explicit_vectors():
    """Training scores distractors through a (T, T) cosine table per utterance; the same steps given as
    explicit vectors, and the float64 loops, agree, duplicates of the positive (planted here as equal
    codevectors at two masked steps) included, and so do the gradients."""
    g = gen(3)
    B, T, d = 3, 12, 8
    mask = compute_mask(torch.tensor([12, 9, 5]), T, 0.2, 3, g)
    targets = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    for b in range(2):  # two masked steps of utterance b share one codevector
        s, t = mask[b].nonzero()[:2, 0].tolist()
        targets[b, t] = targets[b, s]
    context = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    steps = negative_steps(mask, 20, gen(4))  # 20 draws: each masked step meets its twin
    negatives = torch.stack([targets[b, steps[b]] for b in range(B)]) * mask[:, :, None, None]
    assert torch.equal(negatives, sample_negatives(targets, mask, 20, gen(4)))
    ref = reference_contrastive(context, targets, negatives, mask, 0.1)
    assert ref < reference_contrastive(context, targets, negatives, mask, 0.1, skip_identical=False) - 1e-3
    grads = []
    for given in ({"negative_steps": steps}, {"negatives": negatives}):
        c, q = context.clone().requires_grad_(True), targets.clone().requires_grad_(True)
        if "negatives" in given:
            given = {"negatives": torch.stack([q[b, steps[b]] for b in range(B)]) * mask[:, :, None, None]}
        logits = contrastive_logits(c, q, mask, 0.1, **given)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        assert float(loss.detach()) == pytest.approx(ref, abs=1e-12)
        loss.backward()
        grads.append((c.grad, q.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="exactly one"):
        contrastive_logits(context, targets, mask, 0.1)


def test_contrastive_ignores_unmasked_steps_and_has_finite_gradients():
    x = loss_inputs(torch.float64)
    x["context"].requires_grad_(True)
    out = Wav2Vec2Loss()(**x)
    out["loss_contrastive"].backward()
    grad = x["context"].grad
    assert torch.isfinite(grad).all()  # the -inf logits give zero, not NaN, gradients
    assert (grad[~x["mask"]] == 0).all() and (grad[x["mask"]] != 0).any()
    y = loss_inputs(torch.float64)
    y["context"][~y["mask"]] = 1e3
    y["targets"][~y["mask"]] = -7.0
    assert float(Wav2Vec2Loss()(**y)["loss_contrastive"]) == pytest.approx(
        float(out["loss_contrastive"].detach()), abs=1e-12
    )


def test_total_loss_is_the_weighted_sum():
    x = loss_inputs(torch.float64)
    out = Wav2Vec2Loss(logit_temp=0.1, diversity_weight=0.1, feature_pen_weight=10.0)(**x)
    expected = out["loss_contrastive"] + 0.1 * out["loss_diversity"] + 10.0 * out["loss_features"]
    assert float(out["loss"]) == pytest.approx(float(expected), abs=1e-12)
    assert float(out["loss_features"]) == pytest.approx(0.3)
    assert set(out) == {"loss", "loss_contrastive", "loss_diversity", "loss_features", "codebook_perplexity"}


def test_diversity_penalty_matches_hand_computation():
    probs = loss_inputs(torch.float64)["probs"]  # (2, 7)
    G, V = probs.shape
    perplexity = 0.0
    for g in range(G):
        entropy = -sum(float(p) * math.log(float(p)) for p in probs[g])
        perplexity += math.exp(entropy)
    expected = (G * V - perplexity) / (G * V)
    assert float(diversity_penalty(probs)) == pytest.approx(expected, abs=1e-12)
    out = Wav2Vec2Loss()(**loss_inputs(torch.float64))
    assert float(out["loss_diversity"]) == pytest.approx(expected, abs=1e-12)
    assert float(out["codebook_perplexity"]) == pytest.approx(perplexity, abs=1e-9)


@pytest.mark.parametrize("G,V", [(2, 320), (3, 5)])
def test_diversity_penalty_extremes(G: int, V: int):
    uniform = torch.full((G, V), 1.0 / V, dtype=torch.float64)
    assert float(diversity_penalty(uniform)) == pytest.approx(0.0, abs=1e-12)
    one_code = torch.zeros(G, V, dtype=torch.float64)
    one_code[torch.arange(G), torch.arange(G) % V] = 1.0
    assert float(diversity_penalty(one_code)) == pytest.approx((G * V - G) / (G * V), abs=1e-12)


# ---------------------------------------------------------------- masks and distractors


def expected_masked(n: int, p: float, M: int) -> float:
    """E[# masked steps] for k = p * n (an integer here) distinct starts among n - M + 1, spans of M."""
    k, S = round(p * n), n - M + 1
    total = 0.0
    for t in range(n):
        window = min(t, S - 1) - max(0, t - M + 1) + 1  # starts whose span covers t
        total += 1.0 - math.comb(S - window, k) / math.comb(S, k)
    return total


def test_mask_spans_stay_within_lengths_and_mask_at_least_two():
    lengths = torch.tensor([100, 37, 2, 3, 11, 10])
    T = 120
    for seed in range(20):
        for p, M in [(0.065, 10), (0.0, 10), (0.5, 1), (0.2, 4)]:
            mask = compute_mask(lengths, T, p, M, gen(seed))
            assert mask.shape == (6, T) and mask.dtype == torch.bool
            for b, n in enumerate(lengths.tolist()):
                assert not mask[b, n:].any()
                assert int(mask[b, :n].sum()) >= 2
                # at most ceil(p * n) (or the minimum) spans of min(M, n) steps
                spans = max(math.ceil(p * n), math.ceil(2 / min(M, n)))
                assert int(mask[b].sum()) <= spans * min(M, n)
    with pytest.raises(ValueError):
        compute_mask(torch.tensor([5, 1]), 5, 0.065, 10, gen(0))


def test_mask_proportion_matches_span_sampling():
    n, p, M = 1000, 0.065, 10
    mask = compute_mask(torch.full((200,), n), n, p, M, gen(3))
    expected = expected_masked(n, p, M)  # about 49% of the steps, as in the paper
    assert 0.47 < expected / n < 0.51
    assert float(mask.sum(1).double().mean()) == pytest.approx(expected, rel=0.01)
    # fewer masked steps than p * n * M because spans overlap
    assert float(mask.sum(1).double().mean()) < p * n * M


def test_mask_is_deterministic_for_a_generator():
    lengths = torch.tensor([300, 200, 50])
    a = compute_mask(lengths, 300, 0.065, 10, gen(7))
    assert torch.equal(a, compute_mask(lengths, 300, 0.065, 10, gen(7)))
    assert not torch.equal(a, compute_mask(lengths, 300, 0.065, 10, gen(8)))


def unique_targets(B: int, T: int, d: int = 4) -> torch.Tensor:
    """targets[b, t] = (b, t, random...): every step identifiable from its vector."""
    x = torch.randn(B, T, d, generator=gen(0))
    x[..., 0] = torch.arange(B)[:, None].float()
    x[..., 1] = torch.arange(T)[None, :].float()
    return x


@pytest.mark.parametrize("K", [3, 300])  # distinct draws / draws with replacement
def test_negatives_are_other_masked_steps_of_the_same_utterance(K: int):
    B, T = 3, 60
    targets = unique_targets(B, T)
    mask = compute_mask(torch.tensor([60, 45, 20]), T, 0.1, 5, gen(1))
    neg = sample_negatives(targets, mask, K, gen(2))
    assert neg.shape == (B, T, K, 4)
    assert (neg[~mask] == 0).all()
    for b in range(B):
        masked = set(mask[b].nonzero().squeeze(1).tolist())
        for t in masked:
            assert (neg[b, t, :, 0] == b).all()  # same utterance
            steps = neg[b, t, :, 1].long().tolist()
            assert t not in steps  # never the step itself
            assert set(steps) <= masked - {t}  # only masked steps
            if len(masked) - 1 >= K:
                assert len(set(steps)) == K  # distinct when there are enough
            else:
                assert set(steps) == masked - {t}  # with replacement: 300 draws reach all of them


def test_negatives_are_uniform_and_carry_gradients():
    targets = unique_targets(1, 8).requires_grad_(True)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [1, 2, 5, 6, 7]] = True
    neg = sample_negatives(targets, mask, 4000, gen(5))
    counts = torch.bincount(neg[0, 1, :, 1].long(), minlength=8)
    assert counts[[0, 1, 3, 4]].sum() == 0
    assert ((counts[[2, 5, 6, 7]] - 1000).abs() < 120).all()  # each other masked step about 1/4 of draws
    neg.sum().backward()
    assert targets.grad[0, 0].abs().sum() == 0 and targets.grad[0, 1].abs().sum() > 0
    assert torch.equal(neg, sample_negatives(targets, mask, 4000, gen(5)))


# ---------------------------------------------------------------- quantiser


def test_quantiser_is_hard_in_training_with_straight_through_gradients():
    q = GumbelQuantizer(6, codebooks=2, codebook_size=5, codevector_dim=8)
    with torch.no_grad():
        q.proj.weight.copy_(torch.eye(8))
        q.proj.bias.zero_()
    x = torch.randn(3, 7, 6, generator=gen(0))
    valid = torch.ones(3, 7, dtype=torch.bool)
    out, probs, perplexity = q.train()(x, valid, gen(1))
    assert out.shape == (3, 7, 8) and probs.shape == (2, 5)
    groups = out.detach().view(3, 7, 2, 1, 4)
    hits = (groups == q.codebook.detach()[None, None]).all(-1)  # (B, T, G, V): exactly one entry per group
    assert (hits.sum(-1) == 1).all()
    (out * torch.randn(out.shape, generator=gen(2))).sum().backward()
    assert q.logits.weight.grad is not None and q.logits.weight.grad.abs().sum() > 0
    assert q.codebook.grad.abs().sum() > 0
    # in evaluation the choice is the argmax and no gradient reaches the logits
    q.zero_grad()
    out_eval, _, _ = q.eval()(x, valid)
    idx = q.logits(x).view(3, 7, 2, 5).argmax(-1)
    expected = torch.stack([q.codebook[g, idx[..., g]] for g in range(2)], dim=2).reshape(3, 7, 8)
    assert torch.equal(out_eval, expected)
    out_eval.sum().backward()
    assert q.logits.weight.grad is None or q.logits.weight.grad.abs().sum() == 0


def test_quantiser_samples_codes_by_their_softmax_probabilities():
    """Gumbel-max: the hard choice is entry v with probability softmax(logits)_v, at any temperature."""
    q = GumbelQuantizer(3, codebooks=2, codebook_size=4, codevector_dim=8).train()
    with torch.no_grad():
        q.logits.weight.mul_(0.3)
        q.proj.weight.copy_(torch.eye(8))
        q.proj.bias.zero_()
        q.codebook.copy_(torch.arange(8.0).view(2, 4, 1).expand(2, 4, 4))  # entry v of group g holds 4g + v
    x = torch.randn(1, 1, 3, generator=gen(0)).expand(1, 20000, 3)
    valid = torch.ones(1, 20000, dtype=torch.bool)
    out, probs, _ = q(x, valid, gen(1))
    codes = out.detach().view(20000, 2, 4)[..., 0]  # (N, G)
    soft = q.logits(x[0, 0]).view(2, 4).softmax(-1).detach()
    for g in range(2):
        freq = torch.bincount(codes[:, g].long() - 4 * g, minlength=4).double() / 20000
        assert torch.allclose(freq, soft[g].double(), atol=0.015)
    assert torch.allclose(probs, soft, atol=1e-6)  # pbar is the noise-free softmax
    assert torch.equal(out, q(x, valid, gen(1))[0])


def test_quantiser_probabilities_average_real_frames_only():
    q = GumbelQuantizer(6, codebooks=2, codebook_size=5, codevector_dim=8)
    x = torch.randn(2, 9, 6, generator=gen(0))
    valid = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    x_garbage = x.clone()
    x_garbage[1, 4:] = 100.0
    _, probs, perplexity = q(x_garbage, valid, gen(1))
    soft = q.logits(x).view(2, 9, 2, 5).softmax(-1)
    expected = torch.cat([soft[0], soft[1, :4]]).mean(0).detach()
    assert torch.allclose(probs, expected, atol=1e-6)
    assert float(perplexity) == pytest.approx(float((-(expected * expected.log()).sum(-1)).exp().sum()), rel=1e-5)


def test_temperature_schedule():
    q = GumbelQuantizer(4)
    assert q.set_temperature(0) == 2.0 and q.temperature == 2.0
    assert q.set_temperature(100_000) == pytest.approx(2.0 * math.exp(100_000 * math.log(0.999995)), rel=1e-9)
    assert q.set_temperature(100_000) == pytest.approx(1.2131, abs=1e-4)
    floor_step = math.ceil(math.log(0.25) / math.log(0.999995))  # 2 * 0.999995^N = 0.5
    assert q.set_temperature(floor_step - 10) > 0.5
    assert q.set_temperature(floor_step) == 0.5 and q.set_temperature(10**7) == 0.5


# ---------------------------------------------------------------- the backbone end to end


def test_forward_outputs_and_transformer_input():
    frontend, model, loss_fn = build(Wav2Vec2SslConfig())  # the paper's sizes: G=2, V=320, d=256, K=100
    audio, lengths = tone_batch()
    seen: dict[str, torch.Tensor] = {}
    model.backbone.encoder.transformer.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].detach()))
    out = model(audio, lengths, gen(0))
    B, T = out["mask"].shape
    frames = (((lengths - 10) // 5 + 1 - 3) // 2 + 1 - 3) // 2 + 1
    assert T == int(frames.max())
    assert out["context"].shape == out["targets"].shape == (B, T, 256)
    assert out["negative_steps"].shape == (B, T, 100) and out["probs"].shape == (2, 320)
    assert not (out["mask"] & (torch.arange(T) >= frames[:, None])).any()
    # masked steps enter the transformer as the learned embedding, padding as zeros
    x = seen["x"]
    assert torch.equal(x[out["mask"]], model.mask_embedding.detach().expand(int(out["mask"].sum()), -1))
    assert (x[torch.arange(T) >= frames[:, None]] == 0).all()
    assert not torch.equal(x[~out["mask"] & (torch.arange(T) < frames[:, None])][0], model.mask_embedding.detach())
    assert torch.isfinite(loss_fn(**out)["loss"])


def test_targets_quantise_the_unmasked_features():
    _, model, _ = build(TINY_SSL)
    model.eval()  # argmax codes: the targets are a function of the features alone
    audio, lengths = tone_batch()
    a, b = model(audio, lengths, gen(0)), model(audio, lengths, gen(1))
    assert not torch.equal(a["mask"], b["mask"])
    assert torch.equal(a["targets"], b["targets"])  # the mask does not reach the targets
    assert not torch.allclose(a["context"], b["context"])  # but it does reach the context


def test_every_parameter_gets_a_gradient():
    _, model, loss_fn = build(Wav2Vec2SslConfig())
    audio, lengths = tone_batch()
    loss_fn(**model(audio, lengths, gen(0)))["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    own = ["mask_embedding", "quantizer.logits.weight", "quantizer.codebook", "quantizer.proj.weight"]
    own += ["final_proj.weight", "backbone.feature_extractor.conv_layers.0.conv.weight"]
    grads = dict(model.named_parameters())
    for name in own:
        assert grads[name].grad.abs().sum() > 0, name


def test_feature_grad_mult_scales_only_the_feature_encoder_gradient():
    audio, lengths = tone_batch()
    grads = []
    for mult in (1.0, 0.1):
        _, model, loss_fn = build(Wav2Vec2SslConfig(codebook_size=16, codevector_dim=16, feature_grad_mult=mult))
        out = loss_fn(**model(audio, lengths, gen(0)))
        out["loss"].backward()
        p = dict(model.named_parameters())
        grads.append(
            (
                float(out["loss"].detach()),
                p["backbone.feature_extractor.conv_layers.1.conv.weight"].grad,
                p["final_proj.weight"].grad,
            )
        )
    assert grads[0][0] == grads[1][0]
    assert torch.allclose(grads[1][1], 0.1 * grads[0][1], rtol=1e-4, atol=1e-6)
    assert torch.equal(grads[1][2], grads[0][2])


@pytest.fixture(scope="module")
def trained():
    frontend, model, loss_fn = build(TINY_SSL)
    audio, lengths = tone_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(30):
        model.quantizer.set_temperature(step)
        out = loss_fn(**model(audio, lengths, gen(step)))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append(float(out["loss_contrastive"].detach()))
    return frontend, model, history


def test_training_lowers_the_loss_below_chance(trained):
    _, _, history = trained
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < first - 0.3
    # chance is log(1 + K): below it, the context predicts masked codes from their neighbours
    assert last < math.log(1 + TINY_SSL.num_negatives) - 0.2


def test_frontend_state_dict_loads_into_a_fresh_frontend(trained):
    frontend, model, _ = trained
    state = frontend_state_dict(model)
    fresh = Wav2Vec2AudioFrontend(SPF, "custom", TINY)
    assert set(state) == set(fresh.model.state_dict())
    audio, lengths = tone_batch()
    frontend.eval(), fresh.eval()
    with torch.no_grad():
        before = fresh(audio, lengths)[0]
        fresh.model.load_state_dict(state, strict=True)
        other = Wav2Vec2AudioFrontend(SPF, "custom", TINY).eval()
        other.load_pretrained(state)
        expected, frames = frontend(audio, lengths)
        got, got_frames = fresh(audio, lengths)
    assert not torch.allclose(before, expected)
    assert torch.equal(frames, got_frames)
    assert torch.equal(got, expected)
    assert torch.equal(other(audio, lengths)[0].detach(), expected)
