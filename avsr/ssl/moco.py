r"""MoCo v2 pretraining of the visual front-end on unlabelled mouth clips (Pan et al., 2022).

Momentum contrast (He et al., 2020) with the MoCo v2 changes (Chen et al., 2020: an MLP projection head,
temperature 0.2, stronger augmentation; the views come from :func:`data.views.two_views`). A query
encoder f_q (the front-end, a masked mean over the real frames, and a Linear-ReLU-Linear head) embeds
one view of each clip; a key encoder f_k, a momentum copy of f_q that gets no gradient, embeds the
other. Keys of earlier batches wait in a queue of K negatives. With L2-normalised q, k_+ and queue
entries k_i, the InfoNCE loss of a query is (MoCo Eq. 1)

    L_q = -log  exp(q.k_+ / tau) / ( exp(q.k_+ / tau) + sum_{i=1..K} exp(q.k_i / tau) )

averaged over the batch: a (1 + K)-way cross-entropy whose target is the positive, logit 0.

Order of one training step, as in MoCo's Algorithm 1::

    out = model(view_q, view_k, lengths_q, lengths_k)   # q = f_q(x_q); k = f_k(x_k), no gradient
    loss = MocoLoss(...)(**out)                          # logits [q.k_+, q.queue] / tau, CE to 0
    loss["loss"].backward(); optimizer.step()           # update f_q
    model.after_step(out["k"])                          # f_k = m f_k + (1 - m) f_q; enqueue(k), dequeue

So the keys of a step come from the key encoder as the previous step's momentum update left it, and
the loss sees the queue before this step's keys join it (a query never meets its own key among the
negatives). The released code runs the momentum update at the start of ``forward`` instead: the same
sequence shifted by one call, since nothing changes f_q between an optimizer step and the next forward
(its first update, before any step, is a no-op because f_k starts as a copy of f_q).

Batch norm: MoCo shuffles the key batch across GPUs ("shuffling BN") so that a query and its positive
key are normalised with statistics of different sub-batches; shared statistics would let the model find
the positive from them rather than from the content. In one process (and on each GPU without the
shuffle) the key encoder's batch norm normalises over the key batch itself, the same clips as the query
batch. ``shuffle_groups`` > 1 emulates the trick: queries are encoded in that many contiguous
sub-batches, keys in as many sub-batches of a random permutation of the batch.

Across processes (DDP): give :meth:`MocoModel.after_step` the keys gathered from every process (e.g.
``vatt.distributed.gather_no_grad``) so that all processes hold the same queue, and call it on the
unwrapped model. The loss itself is local: each process's queries against its own keys and the queue.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from avsr.masks import make_valid_mask

__all__ = ["MocoConfig", "MocoLoss", "MocoModel", "frontend_state_dict"]


@dataclass
class MocoConfig:
    """MoCo v2's hyperparameters (Chen et al., 2020), except the queue size.

    MoCo uses K = 65536 negatives for ImageNet's 1.28M images. The default here is 4096 because mouth
    corpora can be small: a queue that approaches the number of clips holds earlier keys of the very clips
    being queried, negatives that are really positives. Keep K well below the corpus size.
    """

    dim: int = 128  # projection output
    hidden_dim: int = 2048  # MLP head's hidden width
    queue_size: int = 4096  # K
    momentum: float = 0.999  # m
    temperature: float = 0.2  # tau
    clip_frames: int = 16  # frames per view
    shuffle_groups: int = 1  # sub-batches emulating shuffling BN in one process; 1 = off

    def __post_init__(self) -> None:
        for name in ("dim", "hidden_dim", "queue_size", "clip_frames", "shuffle_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"MocoConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"MocoConfig.momentum must be in [0, 1], got {self.momentum}")
        if self.temperature <= 0:
            raise ValueError(f"MocoConfig.temperature must be > 0, got {self.temperature}")


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's MLP head: Linear-ReLU-Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class MocoModel(nn.Module):
    """Query and key encoders over a visual front-end, and the queue of keys.

    ``frontend`` maps ``(video (B, T, C, H, W), lengths (B,))`` to ``(features (B, T, D), lengths)`` and has
    ``out_dim`` = D (e.g. :class:`avsr.frontends.ResNetVideoFrontend`). ``forward`` returns ``q`` and ``k``
    (B, dim), L2-normalised, and ``queue`` (dim, K), a copy of the negatives as they were before the step.
    """

    def __init__(self, frontend: nn.Module, cfg: MocoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_q = frontend
        self.head_q = projection_head(int(frontend.out_dim), cfg.hidden_dim, cfg.dim)
        # Algorithm 1 starts the key encoder as a copy of the query encoder.
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.head_k = copy.deepcopy(self.head_q).requires_grad_(False)
        # Random unit vectors until real keys replace them, as in the released code.
        self.register_buffer("queue", F.normalize(torch.randn(cfg.dim, cfg.queue_size), dim=0))  # (dim, K)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # oldest entry

    def _embed(self, encoder: nn.Module, head: nn.Module, video: Tensor, lengths: Tensor) -> Tensor:
        feats, frames = encoder(video, lengths)  # (B, T, D)
        valid = make_valid_mask(frames, feats.shape[1]).to(feats.dtype)  # (B, T)
        pooled = (feats * valid[..., None]).sum(1) / frames.clamp(min=1).to(feats.dtype)[:, None]  # (B, D)
        return F.normalize(head(pooled), dim=-1)  # (B, dim)

    def _encode(
        self, encoder: nn.Module, head: nn.Module, video: Tensor, lengths: Tensor, order: Tensor | None
    ) -> Tensor:
        """Embed in ``shuffle_groups`` sub-batches taken in ``order`` (None: batch order), in batch order."""
        groups = self.cfg.shuffle_groups
        if groups == 1:
            return self._embed(encoder, head, video, lengths)
        order = torch.arange(video.shape[0], device=video.device) if order is None else order
        out = torch.cat([self._embed(encoder, head, video[i], lengths[i]) for i in order.chunk(groups)])
        return out[torch.argsort(order)]  # back to batch order

    def forward(self, view_q: Tensor, view_k: Tensor, lengths_q: Tensor, lengths_k: Tensor) -> dict[str, Tensor]:
        q = self._encode(self.encoder_q, self.head_q, view_q, lengths_q, None)  # (B, dim)
        with torch.no_grad():
            shuffle = torch.randperm(view_k.shape[0], device=view_k.device) if self.cfg.shuffle_groups > 1 else None
            k = self._encode(self.encoder_k, self.head_k, view_k, lengths_k, shuffle)  # (B, dim)
        # A copy: the queue changes in place in after_step, and backward still needs these negatives.
        return {"q": q, "k": k, "queue": self.queue.clone()}

    @torch.no_grad()
    def momentum_update(self) -> None:
        """f_k = m f_k + (1 - m) f_q for every parameter; buffers (batch-norm running statistics) are copied."""
        m = self.cfg.momentum
        for enc_q, enc_k in ((self.encoder_q, self.encoder_k), (self.head_q, self.head_k)):
            for p_q, p_k in zip(enc_q.parameters(), enc_k.parameters(), strict=True):
                p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)
            for b_q, b_k in zip(enc_q.buffers(), enc_k.buffers(), strict=True):
                b_k.copy_(b_q)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (N, dim), L2-normalised, over the N oldest queue entries (all K newest if N > K)."""
        keys = F.normalize(keys.detach().to(self.queue.dtype), dim=-1)  # (N, dim)
        n, size = keys.shape[0], self.queue.shape[1]
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=keys.device)) % size  # wraps past the end
        if n > size:  # later keys would overwrite earlier ones; keep only the newest K
            slots, keys = slots[-size:], keys[-size:]
        self.queue[:, slots] = keys.t()
        self.queue_ptr.fill_((ptr + n) % size)

    def after_step(self, keys: Tensor) -> None:
        """After the optimizer step, Algorithm 1's last lines: the momentum update, then enqueue this
        step's keys (those of every micro-batch when gradients are accumulated)."""
        self.momentum_update()
        self.enqueue(keys)


class MocoLoss(nn.Module):
    """InfoNCE of MoCo (He et al., 2020, Eq. 1) over [q.k_+, q.queue] / tau, target 0.

    Takes ``q``, ``k`` (B, dim) and ``queue`` (dim, K), L2-normalised, as :class:`MocoModel` returns them;
    keys and queue are constants. Returns ``loss`` and ``moco_accuracy``, the fraction of queries whose
    positive is the largest logit (detached).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, q: Tensor, k: Tensor, queue: Tensor) -> dict[str, Tensor]:
        dtype = torch.promote_types(q.dtype, torch.float32)  # logits in at least float32 under autocast
        q, k, queue = q.to(dtype), k.detach().to(dtype), queue.detach().to(dtype)
        l_pos = (q * k).sum(-1, keepdim=True)  # (B, 1)
        l_neg = q @ queue  # (B, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # (B, 1 + K)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(dim=1) == 0).to(dtype).mean().detach()
        return {"loss": loss, "moco_accuracy": accuracy}


def frontend_state_dict(model: MocoModel) -> dict[str, Tensor]:
    """The query front-end's weights under the front-end's own key names (``ResNetVideoFrontend.state_dict()``),
    ready for ``AvsrModel.load_frontend_state("v", ...)``. MoCo transfers the query encoder."""
    return {name: t.detach().clone() for name, t in model.encoder_q.state_dict().items()}
