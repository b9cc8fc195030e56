r"""wav2vec 2.0 self-supervised pretraining of the audio front-end (Baevski et al., 2020, Sec. 2-3).

The backbone is torchaudio's ``Wav2Vec2Model`` (``feature_extractor``, then ``encoder.feature_projection``
and ``encoder.transformer``); torchaudio ships no wav2vec 2.0 pretraining objective, so masking, the
quantiser and the loss are written here.

    z = f(X)                      conv feature encoder output, (B, T, C)
    q = Q(z)                      Gumbel-softmax product quantiser: G codebooks of V entries (Sec. 2)
    c = g(mask(proj(z)))          transformer over projected features, masked spans replaced by a
                                  learned embedding (Sec. 3.1), then a final projection to q's dim
    L   = L_m + alpha L_d         (Eq. 2)
    L_m = -log exp(sim(c_t, q_t)/kappa) / sum_{q~ in Q_t} exp(sim(c_t, q~)/kappa)     (Eq. 3)
    L_d = (GV - sum_g exp(-sum_v pbar_gv log pbar_gv)) / (GV)                          (Eq. 4)

sim is cosine similarity, kappa = 0.1, Q_t is q_t plus K = 100 distractors drawn from other masked steps
of the same utterance, and pbar_g is the softmax over codebook g (without Gumbel noise) averaged over the
batch's real frames. Eq. 4 in the paper is written as the mean negative entropy; the form above is the
released implementation's, the normalised gap between the maximal perplexity GV and the perplexity of the
averaged code distributions: both are minimised by equal use of all entries. As in the released base
configuration an optional penalty ``feature_pen_weight * mean(z^2)`` keeps the encoder output small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avsr.masks import make_valid_mask

__all__ = [
    "GumbelQuantizer",
    "Wav2Vec2Loss",
    "Wav2Vec2Pretrain",
    "Wav2Vec2SslConfig",
    "codebook_perplexity",
    "compute_mask",
    "contrastive_logits",
    "diversity_penalty",
    "frontend_state_dict",
    "negative_steps",
    "sample_negatives",
]


@dataclass
class Wav2Vec2SslConfig:
    """The objective's hyperparameters; defaults are the paper's BASE model (Sec. 2, 3.1, 3.2, 4.2)."""

    codebooks: int = 2  # G
    codebook_size: int = 320  # V
    codevector_dim: int = 256  # d: G groups of d / G = 128 per entry; also the context's final projection
    num_negatives: int = 100  # K
    logit_temp: float = 0.1  # kappa
    diversity_weight: float = 0.1  # alpha
    feature_pen_weight: float = 10.0  # released base configuration; 0 turns it off
    feature_grad_mult: float = 1.0  # scales the conv encoder's gradients (the released base uses 0.1)
    mask_prob: float = 0.065  # p: probability that a step starts a masked span
    mask_length: int = 10  # M
    temperature_start: float = 2.0  # Gumbel-softmax temperature, annealed per update ...
    temperature_end: float = 0.5
    temperature_decay: float = 0.999995  # ... as max(start * decay^step, end)


def compute_mask(
    lengths_in_frames: Tensor,
    T: int,
    mask_prob: float,
    mask_length: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Span mask (B, T), True at masked steps (wav2vec 2.0 Sec. 3.1).

    Per utterance of n real frames, ``round_stochastic(mask_prob * n)`` start steps are drawn without
    replacement among the starts whose span of ``min(mask_length, n)`` steps fits inside the real frames;
    spans may overlap (about 49% of steps are masked with the paper's p = 0.065, M = 10). At least two
    steps are masked per utterance so that every masked step has a distractor. Drawn on the generator's
    device (the CPU by default), so a seeded generator gives the same mask on any device.
    """
    lengths = lengths_in_frames.detach().cpu().long()
    if int(lengths.min()) < 2:
        raise ValueError(f"every utterance needs at least 2 frames to mask, got lengths {lengths.tolist()}")
    if int(lengths.max()) > T:
        raise ValueError(f"a length exceeds T={T}: {lengths.tolist()}")
    device = generator.device if generator is not None else torch.device("cpu")
    mask = torch.zeros(len(lengths), T, dtype=torch.bool, device=device)
    for b, n in enumerate(lengths.tolist()):
        span = min(mask_length, n)
        num_starts = n - span + 1
        # stochastic rounding keeps the expected number of starts at exactly mask_prob * n
        k = int(mask_prob * n + torch.rand((), generator=generator, device=device).item())
        k = min(max(k, math.ceil(2 / span)), num_starts)
        starts = torch.randperm(num_starts, generator=generator, device=device)[:k]  # (k,)
        steps = (starts[:, None] + torch.arange(span, device=device)).reshape(-1)  # (k * span,)
        mask[b, steps] = True
    return mask.to(lengths_in_frames.device)


def negative_steps(mask: Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Tensor:
    """Time steps (B, T, K) of the distractors of each masked step: other masked steps of the same utterance.

    K distinct steps when the utterance has at least K other masked steps, otherwise K draws with
    replacement among them (wav2vec 2.0 Sec. 3.2: "uniformly sampled from other masked time steps").
    Rows at unmasked steps are 0. Returned on the mask's device.
    """
    B, T = mask.shape
    K = num_negatives
    device = generator.device if generator is not None else torch.device("cpu")
    mask_local = mask.detach().to(device)
    index = torch.zeros(B, T, K, dtype=torch.long, device=device)  # time step of each distractor
    for b in range(B):
        steps = mask_local[b].nonzero().squeeze(1)  # (m,)
        m = steps.numel()
        if m == 0:
            continue
        if m < 2:
            raise ValueError(f"utterance {b} has {m} masked step: distractors need at least 2")
        if m - 1 >= K:
            # a random permutation of the m - 1 others per row, first K taken
            pick = torch.rand(m, m - 1, generator=generator, device=device).argsort(dim=1)[:, :K]  # (m, K)
        else:
            pick = torch.randint(m - 1, (m, K), generator=generator, device=device)  # (m, K)
        # pick indexes the m - 1 other steps: shift past the row's own step so it is never drawn
        pick = pick + (pick >= torch.arange(m, device=device)[:, None]).long()
        index[b, steps] = steps[pick]
    return index.to(mask.device)


def sample_negatives(
    targets: Tensor, mask: Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> Tensor:
    """The distractor vectors (B, T, K, d) of :func:`negative_steps`; rows at unmasked steps are zero.

    Gradients flow into the drawn targets. The result holds K times the targets' memory, which is why
    training passes the steps to :class:`Wav2Vec2Loss` instead; this form is the explicit reference.
    """
    B, T, d = targets.shape
    index = negative_steps(mask, num_negatives, generator).to(targets.device)
    K = index.shape[2]
    negatives = torch.gather(targets, 1, index.view(B, T * K, 1).expand(-1, -1, d)).view(B, T, K, d)
    return negatives * mask[:, :, None, None].to(negatives.dtype)


def contrastive_logits(
    context: Tensor,
    targets: Tensor,
    mask: Tensor,
    logit_temp: float,
    negative_steps: Tensor | None = None,
    negatives: Tensor | None = None,
) -> Tensor:
    """sim(c_t, .) / kappa of every masked step (N, 1 + K): the positive first, then the K distractors.

    The distractors are given either as time steps (B, T, K) of the same utterance, scored through one
    (T, T) cosine table per utterance, or as explicit vectors (B, T, K, d). A distractor equal to its
    positive (the same codevector) scores -inf. Computed in at least float32.
    """
    if (negative_steps is None) == (negatives is None):
        raise ValueError("give exactly one of negative_steps and negatives")
    dtype = torch.promote_types(context.dtype, torch.float32)
    if negatives is not None:
        c = context[mask].to(dtype)  # (N, d) over the N masked steps of the batch
        pos = targets[mask].to(dtype)  # (N, d)
        neg = negatives[mask].to(dtype)  # (N, K, d)
        candidates = torch.cat([pos[:, None], neg], dim=1)  # (N, 1 + K, d)
        logits = nn.functional.cosine_similarity(c[:, None], candidates, dim=-1) / logit_temp
        same = (neg == pos[:, None]).all(-1)  # (N, K)
    else:
        B, T, K = negative_steps.shape
        c = nn.functional.normalize(context.to(dtype), dim=-1, eps=1e-8)
        q = nn.functional.normalize(targets.to(dtype), dim=-1, eps=1e-8)
        table = torch.einsum("btd,bsd->bts", c, q) / logit_temp  # (B, T, T): step t's context, step s's target
        pos = table.diagonal(dim1=1, dim2=2)[:, :, None]  # (B, T, 1)
        logits = torch.cat([pos, table.gather(2, negative_steps)], dim=2)[mask]  # (N, 1 + K)
        # equal codevectors share an id; a distractor with its positive's id is the same vector
        ids = torch.unique(targets.detach().reshape(B * T, -1), dim=0, return_inverse=True)[1].view(B, T)
        same = (ids.gather(1, negative_steps.view(B, T * K)).view(B, T, K) == ids[:, :, None])[mask]
    same = torch.cat([torch.zeros_like(same[:, :1]), same], dim=1)
    return logits.masked_fill(same, float("-inf"))


def codebook_perplexity(probs: Tensor) -> Tensor:
    """sum_g exp(H(pbar_g)) for averaged code probabilities (G, V): GV when every entry is used equally."""
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # (G,); 0 log 0 = 0
    return entropy.exp().sum()


def diversity_penalty(probs: Tensor) -> Tensor:
    """L_d of wav2vec 2.0 (Eq. 4, released form): (GV - perplexity) / (GV), in [0, (GV - G) / (GV)]."""
    G, V = probs.shape
    return (G * V - codebook_perplexity(probs)) / (G * V)


class GumbelQuantizer(nn.Module):
    """Product quantiser with Gumbel softmax (wav2vec 2.0 Sec. 2; Jang et al., 2016).

    A linear map gives G x V logits per step; in training one entry per codebook is chosen with the
    straight-through Gumbel softmax (hard one-hot forward, soft gradient), in evaluation by argmax. The
    chosen entries (d / G each) are concatenated and linearly transformed to q (B, T, d).
    """

    def __init__(
        self,
        in_dim: int,
        codebooks: int = 2,
        codebook_size: int = 320,
        codevector_dim: int = 256,
        temperature_start: float = 2.0,
        temperature_end: float = 0.5,
        temperature_decay: float = 0.999995,
    ) -> None:
        super().__init__()
        if codevector_dim % codebooks:
            raise ValueError(f"codevector_dim={codevector_dim} is not divisible by codebooks={codebooks}")
        self.codebooks, self.codebook_size, self.codevector_dim = codebooks, codebook_size, codevector_dim
        self.logits = nn.Linear(in_dim, codebooks * codebook_size)
        # unit-variance weights on layer-normed input give logits of scale sqrt(in_dim), so the choice of
        # entry depends on the input rather than on the Gumbel noise from the first update (the released
        # model initialises them so); with PyTorch's default scale the noise decides and the targets are
        # unpredictable
        nn.init.normal_(self.logits.weight, std=1.0)
        nn.init.zeros_(self.logits.bias)
        # independent random directions, so that distinct entries start out distinguishable by cosine
        self.codebook = nn.Parameter(torch.randn(codebooks, codebook_size, codevector_dim // codebooks))
        self.proj = nn.Linear(codevector_dim, codevector_dim)
        self.temperature_start, self.temperature_end = temperature_start, temperature_end
        self.temperature_decay = temperature_decay
        self.temperature = temperature_start

    def set_temperature(self, step: int) -> float:
        """Anneal to ``max(start * decay^step, end)`` for update ``step``; returns the new temperature."""
        self.temperature = max(self.temperature_start * self.temperature_decay**step, self.temperature_end)
        return self.temperature

    def forward(
        self, x: Tensor, valid: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C), valid (B, T) -> codevectors (B, T, d), pbar (G, V) over real frames, perplexity."""
        B, T, _ = x.shape
        G, V = self.codebooks, self.codebook_size
        logits = self.logits(x).float().view(B, T, G, V)  # softmax statistics in float32 under autocast
        weight = valid[:, :, None, None].to(logits.dtype)
        probs = (logits.softmax(-1) * weight).sum((0, 1)) / weight.sum().clamp(min=1.0)  # (G, V)
        if self.training:
            device = generator.device if generator is not None else logits.device
            noise = torch.empty(logits.shape, device=device).exponential_(generator=generator)
            gumbel = -noise.log().to(logits.device)  # Gumbel(0, 1)
            soft = ((logits + gumbel) / self.temperature).softmax(-1)  # (B, T, G, V)
            hard = nn.functional.one_hot(soft.argmax(-1), V).to(soft.dtype)
            # straight-through: hard forward, soft backward; written so the forward is exactly one-hot
            # (hard - soft + soft can round), so equal codes give equal codevectors
            onehot = hard + (soft - soft.detach())
        else:
            onehot = nn.functional.one_hot(logits.argmax(-1), V).to(logits.dtype)
        codes = torch.einsum("btgv,gvk->btgk", onehot.to(self.codebook.dtype), self.codebook)  # (B, T, G, d/G)
        q = self.proj(codes.reshape(B, T, self.codevector_dim))  # (B, T, d)
        return q, probs, codebook_perplexity(probs.detach())


def _attention_mask(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive (B, 1, T, T) mask hiding padded keys, the form torchaudio's ``Encoder`` builds from lengths."""
    B, T = valid.shape
    return (-10000.0 * (~valid)[:, None, None, :].to(dtype)).expand(B, 1, T, T)


class Wav2Vec2Pretrain(nn.Module):
    """A torchaudio ``Wav2Vec2Model`` with wav2vec 2.0's masking, quantiser and context projection.

    ``backbone`` is trained in place (e.g. ``Wav2Vec2AudioFrontend(...).model``); its ``aux`` head, if
    any, is unused. The quantiser reads the feature encoder output after the feature projection's layer
    norm (the released model normalises z there too) and before the projection; masking happens after the
    projection, in the transformer's width, as in torchaudio's HuBERT pretraining model.
    """

    def __init__(self, backbone: nn.Module, cfg: Wav2Vec2SslConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or Wav2Vec2SslConfig()
        self.cfg = cfg
        self.backbone = backbone
        projection = backbone.encoder.feature_projection.projection
        feature_dim, embed_dim = projection.in_features, projection.out_features
        self.mask_embedding = nn.Parameter(torch.empty(embed_dim).uniform_())
        self.quantizer = GumbelQuantizer(
            feature_dim,
            cfg.codebooks,
            cfg.codebook_size,
            cfg.codevector_dim,
            cfg.temperature_start,
            cfg.temperature_end,
            cfg.temperature_decay,
        )
        self.final_proj = nn.Linear(embed_dim, cfg.codevector_dim)

    def forward(self, audio: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """audio (B, S), lengths (B,) -> the named tensors :class:`Wav2Vec2Loss` takes."""
        cfg = self.cfg
        audio = audio * make_valid_mask(lengths, audio.shape[1]).to(audio.dtype)
        z, frames = self.backbone.feature_extractor(audio, lengths)  # (B, T, C), (B,)
        if cfg.feature_grad_mult != 1.0:
            # the same forward value bit for bit (z - z.detach() is exactly 0); the gradient into the conv
            # encoder is scaled by feature_grad_mult
            z = z.detach() + (z - z.detach()) * cfg.feature_grad_mult
        B, T, _ = z.shape
        valid = make_valid_mask(frames, T)  # (B, T)
        valid_f = valid.to(torch.float32)
        features_pen = (z.float().pow(2).mean(-1) * valid_f).sum() / valid_f.sum().clamp(min=1.0)

        fp = self.backbone.encoder.feature_projection
        z = fp.layer_norm(z)
        targets, probs, _ = self.quantizer(z, valid, generator)  # (B, T, d), (G, V): unmasked features

        x = fp.dropout(fp.projection(z))  # (B, T, D)
        mask = compute_mask(frames, T, cfg.mask_prob, cfg.mask_length, generator).to(x.device)  # (B, T)
        x = torch.where(mask[:, :, None], self.mask_embedding.to(x.dtype), x)
        x = x * valid[:, :, None].to(x.dtype)  # padding enters as zeros, as in torchaudio's encoder
        x = self.backbone.encoder.transformer(x, attention_mask=_attention_mask(valid, x.dtype))  # (B, T, D)
        context = self.final_proj(x)  # (B, T, d)

        steps = negative_steps(mask, cfg.num_negatives, generator)  # (B, T, K)
        return {
            "context": context,
            "targets": targets,
            "negative_steps": steps,
            "mask": mask,
            "probs": probs,
            "features_pen": features_pen,
        }


class Wav2Vec2Loss(nn.Module):
    """wav2vec 2.0's objective L_m + alpha L_d (+ feature penalty), Eq. 2-4 of Baevski et al. (2020).

    The contrastive term is the mean over all masked steps of the batch. A distractor equal to its
    positive (the same entry in every codebook, frequent while few entries are in use) gets logit -inf,
    as in the released code: identical codevectors make the target ambiguous, since no c_t can score
    the positive above its copy; the term could not fall below log 2 and its gradient would push c_t
    away from the very vector it is asked to predict. pbar is the batch average of this process (not
    gathered across processes).
    """

    def __init__(self, logit_temp: float = 0.1, diversity_weight: float = 0.1, feature_pen_weight: float = 10.0):
        super().__init__()
        self.logit_temp = logit_temp
        self.diversity_weight = diversity_weight
        self.feature_pen_weight = feature_pen_weight

    def forward(
        self,
        context: Tensor,
        targets: Tensor,
        mask: Tensor,
        probs: Tensor,
        negative_steps: Tensor | None = None,
        negatives: Tensor | None = None,
        features_pen: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Distractors as time steps (B, T, K) or as vectors (B, T, K, d): see :func:`contrastive_logits`."""
        dtype = torch.promote_types(context.dtype, torch.float32)
        logits = contrastive_logits(context, targets, mask, self.logit_temp, negative_steps, negatives)
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the positive comes first
        contrastive = nn.functional.cross_entropy(logits, target)

        diversity = diversity_penalty(probs.to(dtype))
        feature = features_pen.to(dtype) if features_pen is not None else contrastive.new_zeros(())
        loss = contrastive + self.diversity_weight * diversity + self.feature_pen_weight * feature
        return {
            "loss": loss,
            "loss_contrastive": contrastive,
            "loss_diversity": diversity,
            "loss_features": feature,
            "codebook_perplexity": codebook_perplexity(probs.detach().to(dtype)),
        }


def frontend_state_dict(pretrain_model: Wav2Vec2Pretrain) -> dict[str, Tensor]:
    """The backbone's weights under the key names of ``Wav2Vec2AudioFrontend.model.state_dict()``.

    Load them with ``Wav2Vec2AudioFrontend.load_pretrained``; the quantiser, mask embedding and final
    projection exist only for pretraining and are left out, as is any ``aux`` head.
    """
    return {k: v for k, v in pretrain_model.backbone.state_dict().items() if not k.startswith("aux.")}
