"""MoCo v2 for the visual front-end: momentum update, queue, loss against float64, training, weight export."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

import avsr
from avsr.frontends import ResNetVideoFrontend
from avsr.ssl.moco import MocoConfig, MocoLoss, MocoModel, frontend_state_dict
from data.views import two_views

LAYERS = (1, 1, 1, 1)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tensors this small gain nothing from threads, and extra threads stall on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(**overrides) -> MocoModel:
    cfg = {"dim": 8, "hidden_dim": 16, "queue_size": 12, "momentum": 0.75, "clip_frames": 4, **overrides}
    return MocoModel(ResNetVideoFrontend(layers=LAYERS), MocoConfig(**cfg))


def clips(frames: list[int], seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Video (B, T, 1, size, size) with loud noise after each clip's length, and the lengths."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(len(frames), max(frames), 1, size, size, generator=g)
    for i, n in enumerate(frames):
        video[i, n:] = 3.0 * torch.randn(max(frames) - n, 1, size, size, generator=g)
    return video, torch.tensor(frames)


def query_and_key_params(model: MocoModel) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    named = dict(model.named_parameters())
    pairs = [(n, p, named[n.replace("_q.", "_k.", 1)]) for n, p in named.items() if n.split(".")[0].endswith("_q")]
    assert 2 * len(pairs) == len(named)
    return pairs


@torch.no_grad()
def diverge(model: MocoModel, seed: int = 1) -> None:
    """Move the query encoder away from the key encoder (weights and batch-norm statistics)."""
    g = torch.Generator().manual_seed(seed)
    for _, p, _ in query_and_key_params(model):
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    for b in model.encoder_q.buffers():
        if b.is_floating_point():
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
        else:
            b.add_(7)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="queue_size"):
        MocoConfig(queue_size=0)
    with pytest.raises(ValueError, match="momentum"):
        MocoConfig(momentum=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MocoConfig(temperature=0.0)


def test_momentum_update_matches_hand_computation():
    torch.manual_seed(0)
    model = tiny_model(momentum=0.75)
    diverge(model)
    before = [(n, q.detach().double().clone(), k.detach().double().clone()) for n, q, k in query_and_key_params(model)]
    model.momentum_update()
    for (name, q, k), (_, q0, k0) in zip(query_and_key_params(model), before, strict=True):
        torch.testing.assert_close(k.double(), 0.75 * k0 + 0.25 * q0, rtol=1e-6, atol=1e-6, msg=name)
        assert torch.equal(q.double(), q0), name  # the query encoder is untouched
        assert not torch.equal(k.double(), k0), name
    # buffers (batch-norm running statistics and counters) are copied
    for b_q, b_k in zip(model.encoder_q.buffers(), model.encoder_k.buffers(), strict=True):
        assert torch.equal(b_q, b_k)


def test_gradients_reach_the_query_encoder_only():
    torch.manual_seed(0)
    model = tiny_model().train()
    video, lengths = clips([4, 3, 2, 4])
    out = model(video, video.flip(-1), lengths, lengths)
    assert out["q"].requires_grad and not out["k"].requires_grad
    MocoLoss(0.2)(**out)["loss"].backward()
    for name, q, k in query_and_key_params(model):
        assert not k.requires_grad and k.grad is None, name
        assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0, name


def test_forward_pools_the_real_frames_and_keys_come_from_the_key_encoder():
    torch.manual_seed(0)
    model = tiny_model()
    diverge(model)
    model.eval()  # running statistics: a clip embeds the same alone and in a padded batch
    video, lengths = clips([4, 2, 3])
    out = model(video, video, lengths, lengths)
    assert out["q"].shape == out["k"].shape == (3, 8) and out["queue"].shape == (8, 12)
    torch.testing.assert_close(out["q"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["k"].norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        for i, n in enumerate(lengths.tolist()):
            alone = video[i : i + 1, :n]  # cut to its real frames: a plain mean over time
            for enc, head, name in ((model.encoder_q, model.head_q, "q"), (model.encoder_k, model.head_k, "k")):
                expected = F.normalize(head(enc(alone, lengths[i : i + 1])[0].mean(1)), dim=-1)[0]
                torch.testing.assert_close(out[name][i], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out["q"], out["k"], atol=1e-3)  # the two encoders differ, and each is used


def test_shuffle_groups_encode_sub_batches_and_keep_batch_order():
    torch.manual_seed(0)
    model = tiny_model()
    video, lengths = clips([4, 3, 4, 2, 4, 3])
    with torch.no_grad():
        model.eval()  # per-sample computation: grouping must change nothing
        whole = model(video, video, lengths, lengths)
        model.cfg.shuffle_groups = 3
        grouped = model(video, video, lengths, lengths)
        torch.testing.assert_close(grouped["q"], whole["q"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grouped["k"], whole["k"], rtol=1e-5, atol=1e-5)

        model.train()  # batch statistics per sub-batch: queries in order, keys in a random permutation
        torch.manual_seed(5)
        out = model(video, video, lengths, lengths)
        torch.manual_seed(5)
        perm = torch.randperm(6)
        model.cfg.shuffle_groups = 1
        for i in torch.arange(6).chunk(3):
            torch.testing.assert_close(out["q"][i], model(video[i], video[i], lengths[i], lengths[i])["q"])
        for i in perm.chunk(3):
            torch.testing.assert_close(out["k"][i], model(video[i], video[i], lengths[i], lengths[i])["k"])
        assert not torch.allclose(out["k"], model(video, video, lengths, lengths)["k"], atol=1e-4)


def test_enqueue_overwrites_the_oldest_keys_and_wraps_around():
    model = tiny_model(dim=4, queue_size=5)
    init = model.queue.clone()
    torch.testing.assert_close(init.norm(dim=0), torch.ones(5))  # starts as random unit vectors
    g = torch.Generator().manual_seed(0)
    a, b, c = (3.0 * torch.randn(3, 4, generator=g) for _ in range(3))
    unit = lambda x: (x.double() / x.double().norm(dim=-1, keepdim=True)).float()  # noqa: E731

    model.enqueue(a)  # slots 0, 1, 2
    assert int(model.queue_ptr) == 3
    torch.testing.assert_close(model.queue, torch.stack([*unit(a), init[:, 3], init[:, 4]], dim=1))
    model.enqueue(b)  # slots 3, 4, then 0
    assert int(model.queue_ptr) == 1
    torch.testing.assert_close(model.queue, torch.stack([unit(b)[2], *unit(a)[1:], *unit(b)[:2]], dim=1))
    model.enqueue(c)  # slots 1, 2, 3
    assert int(model.queue_ptr) == 4
    torch.testing.assert_close(model.queue, torch.stack([unit(b)[2], *unit(c), unit(b)[1]], dim=1))
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(5))

    # more keys than slots: the newest five stay, the pointer still moves by the batch size
    d = torch.randn(7, 4, generator=g)
    model.enqueue(d)  # slots 4, 0, 1, 2, 3, 4, 0: keys 2..6 land in 1, 2, 3, 4, 0
    assert int(model.queue_ptr) == 1
    torch.testing.assert_close(model.queue, unit(d)[[6, 2, 3, 4, 5]].t())


def test_after_step_updates_the_key_encoder_then_enqueues_the_keys():
    torch.manual_seed(0)
    model = tiny_model(momentum=0.5, queue_size=6)
    diverge(model)
    video, lengths = clips([4, 2])
    out = model(video, video, lengths, lengths)
    before = [(q.detach().clone(), k.detach().clone()) for _, q, k in query_and_key_params(model)]
    loss_queue = out["queue"].clone()
    model.after_step(out["k"])
    for (_, _, k), (q0, k0) in zip(query_and_key_params(model), before, strict=True):
        torch.testing.assert_close(k, 0.5 * k0 + 0.5 * q0)
    torch.testing.assert_close(model.queue[:, :2], out["k"].t())
    assert int(model.queue_ptr) == 2
    assert torch.equal(out["queue"], loss_queue)  # the loss's negatives are a copy, not the live queue


def reference_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> tuple[float, float]:
    """MoCo Eq. 1 by hand in float64: logits, log-softmax, mean; and the top-1 fraction."""
    q, k, queue = q.detach().double(), k.double(), queue.double()
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / tau  # (B, 1 + K)
    m = logits.max(dim=1, keepdim=True).values
    log_softmax = logits - (m + (logits - m).exp().sum(1, keepdim=True).log())
    correct = [float(logits[i, 0] >= logits[i, 1:].max()) for i in range(len(q))]
    return float(-log_softmax[:, 0].mean()), sum(correct) / len(correct)


def test_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g), dim=-1).requires_grad_()
    k = F.normalize(q.detach() + 0.7 * torch.randn(5, 8, generator=g), dim=-1)
    queue = F.normalize(torch.randn(8, 6, generator=g), dim=0)
    out = MocoLoss(0.2)(q, k, queue)
    loss, acc = reference_loss(q, k, queue, 0.2)
    assert abs(out["loss"].item() - loss) < 1e-6
    assert out["moco_accuracy"].item() == pytest.approx(acc) and not out["moco_accuracy"].requires_grad
    # gradient against float64 autograd of the reference formula
    out["loss"].backward()
    q64 = q.detach().double().requires_grad_()
    logits = torch.cat([(q64 * k.double()).sum(1, keepdim=True), q64 @ queue.double()], dim=1) / 0.2
    (-(logits.log_softmax(1)[:, 0]).mean()).backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-5, atol=1e-6)


def test_moco_accuracy_by_hand():
    e = torch.eye(4)
    q = e.clone()
    k = torch.stack([e[0], e[1], -e[2], e[0]])  # rows 2 and 3: the positive is not the best match
    queue = torch.stack([e[3], (e[0] + e[1]) / math.sqrt(2)], dim=1)  # (4, 2)
    out = MocoLoss(0.2)(q, k, queue)
    assert out["moco_accuracy"].item() == 0.5
    # rows 0 and 1: logits [5, 0, 5/sqrt 2]; row 2: [-5, 0, 0]; row 3: [0, 5, 0]
    rows = [
        math.log(1 + math.exp(-5) + math.exp(5 / math.sqrt(2) - 5)),
        math.log(1 + math.exp(-5) + math.exp(5 / math.sqrt(2) - 5)),
        math.log(math.exp(-5) + 2) + 5,
        math.log(2 + math.exp(5)),
    ]
    assert out["loss"].item() == pytest.approx(sum(rows) / 4, abs=1e-6)
    assert reference_loss(q, k, queue, 0.2) == pytest.approx((sum(rows) / 4, 0.5), abs=1e-6)


def smooth_clips(n: int, g: torch.Generator, frames: int = 6, size: int = 36) -> torch.Tensor:
    """(n, T, 1, size, size) clips in [0, 1]: each a random 3x3 grey pattern, smoothly upsampled, plus noise.
    Two views of a clip share the pattern; different clips rarely do."""
    pattern = F.interpolate(torch.rand(n, 1, 3, 3, generator=g), size=(size, size), mode="bilinear")
    video = pattern[:, None].expand(n, frames, 1, size, size)
    return (video + 0.05 * torch.randn(n, frames, 1, size, size, generator=g)).clamp(0, 1)


def view_batch(video: torch.Tensor, g: torch.Generator, frames: int) -> tuple[torch.Tensor, ...]:
    pairs = [two_views(clip, crop=32, frames=frames, hflip_prob=0.0, generator=g) for clip in video]
    vq, vk = zip(*pairs)
    stack = lambda views: torch.stack([v.video for v in views])  # noqa: E731
    lengths = lambda views: torch.tensor([v.length for v in views])  # noqa: E731
    return stack(vq), stack(vk), lengths(vq), lengths(vk)


def test_short_training_run_lowers_the_loss():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        cfg = MocoConfig(dim=16, hidden_dim=64, queue_size=32, momentum=0.9, temperature=0.2, clip_frames=4)
        model = MocoModel(ResNetVideoFrontend(layers=LAYERS), cfg).train()
        loss_fn = MocoLoss(cfg.temperature)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        held_out = view_batch(smooth_clips(16, g), g, cfg.clip_frames)
        others = view_batch(smooth_clips(32, g), g, cfg.clip_frames)

        def held_out_loss() -> float:
            """MoCo's loss (the float64 reference) on fixed clips, the negatives the keys of other fixed clips."""
            with torch.no_grad():
                out = model(*held_out)
                return reference_loss(out["q"], out["k"], model(*others)["k"].t(), cfg.temperature)[0]

        before = held_out_loss()
        with torch.no_grad():  # fill the queue with real keys, so the first steps see real negatives
            for _ in range(cfg.queue_size // 8):
                model.enqueue(model(*view_batch(smooth_clips(8, g), g, cfg.clip_frames))["k"])
        losses = []
        for _ in range(20):
            out = model(*view_batch(smooth_clips(8, g), g, cfg.clip_frames))
            loss = loss_fn(**out)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.after_step(out["k"])
            losses.append(loss.item())
        after = held_out_loss()
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert after < before - 0.3, (before, after)


def test_frontend_weights_load_into_a_fresh_frontend():
    torch.manual_seed(0)
    model = tiny_model().train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    video, lengths = clips([4, 3, 4])
    for _ in range(2):  # move the weights and the running statistics away from their initial values
        out = model(video, video.flip(-1), lengths, lengths)
        optimizer.zero_grad()
        MocoLoss(0.2)(**out)["loss"].backward()
        optimizer.step()
        model.after_step(out["k"])

    state = frontend_state_dict(model)
    fresh = ResNetVideoFrontend(layers=LAYERS)
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    model.eval(), fresh.eval()
    with torch.no_grad():
        expected, _ = model.encoder_q(video, lengths)
        got, got_lengths = fresh(video, lengths)
        assert torch.equal(got, expected) and torch.equal(got_lengths, lengths)
        # an AVSR model takes them as its video front-end
        avsr_model = avsr.create_model("avsr_test", vocab_size=12, modalities="v")
        avsr_model.load_frontend_state("v", state)
        assert torch.equal(avsr_model.video_frontend.eval()(video, lengths)[0], expected)
        # a copy: training on does not change the exported weights
        next(model.encoder_q.parameters()).add_(1.0)
        assert torch.equal(fresh(video, lengths)[0], got)
        assert not torch.equal(state["stem_conv.weight"], next(model.encoder_q.parameters()))
