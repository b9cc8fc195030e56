r"""Contrastive losses of VATT (Akbari et al., 2021): NCE for video-audio, MIL-NCE for video-text.

Notation. x_i is clip i's video embedding, y_{ip} its p-th paired embedding (P = 1 audio for NCE; P text
positives for MIL-NCE, Miech et al., 2020), all L2-normalised; s(a, b) = a.b / tau with tau = 0.07.
v_{ip} in {0, 1} marks a usable pair: the clip has that modality (``audio_mask`` / ``text_mask``) and, for
text, the slot holds a caption (``text_lengths > 0``). A clip is a row of the loss when it has at least one
usable pair: r_i = 1[sum_p v_{ip} > 0]. Sums over c run over all clips of the global batch (every process).

    pos_i      = log sum_{p: v_ip} exp s(x_i, y_ip)
    l_i^{x->y} = log sum_{c} sum_{p: v_cp} exp s(x_i, y_cp)   - pos_i      (video -> audio/text)
    l_i^{y->x} = log sum_{p: v_ip} sum_{c} exp s(y_ip, x_c)   - pos_i      (audio/text -> video)
    L          = (1 / sum_i r_i) sum_{i: r_i} l_i^{x->y}  +  (1 / sum_i r_i) sum_{i: r_i} l_i^{y->x}

This is the released code's ``SymmetricNCE``: the MIL-NCE numerator takes logsumexp over a clip's
positives, the denominators run over all pairs with the positives included, both directions are summed
(not averaged), and the total pretraining loss is the mean of the two terms,
``loss = (loss_nce + loss_milnce) / 2``. Masks follow the released code too: a clip without audio/text
leaves both directions of the loss that needs it, and its missing embeddings leave every denominator,
while its video (which is real) stays a negative for the other clips' audio/text. Empty caption slots
(length 0) are treated like missing text, slot by slot (an extension: the released code pads to P).

Across processes (open_clip's ``gather_with_grad`` + ``local_loss``): embeddings are gathered with gradients,
masks without; each process computes l_i for its own rows against all columns and returns the share
``L_r = (W / V) sum_{i local, r_i} l_i`` (W processes, V = sum_i r_i over the global batch). DDP averages
gradients over processes, so the applied gradient is that of mean_r L_r = L: the same loss and gradients
as one process holding the whole batch, also when masks drop different numbers of rows per process. The
returned value is the global L on every process (the difference L - L_r enters without gradient).
"""

from __future__ import annotations

import torch
from torch import nn

from vatt.distributed import all_reduce_sum_no_grad, check_same_batch, gather_no_grad, gather_with_grad, world_size

_NEG = -1e9  # finite stand-in for -inf: fully masked rows stay finite and get zero gradient


def symmetric_milnce(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric (MIL-)NCE of the module docstring: x (B, D), y (B, P, D), valid (B, P) -> scalar.

    Distributed-aware: gathers over all processes when ``torch.distributed`` is initialised.
    """
    B, P, D = y.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = nn.functional.normalize(x.to(dtype), dim=-1)
    y = nn.functional.normalize(y.to(dtype), dim=-1)
    valid = valid.to(torch.bool)
    check_same_batch(B, x.device)
    x_all = gather_with_grad(x)  # (W*B, D)
    y_all = gather_with_grad(y)  # (W*B, P, D)
    valid_all = gather_no_grad(valid)  # (W*B, P)

    # positives: clip i's own pairs
    pos = torch.einsum("bd,bpd->bp", x, y) / temperature  # (B, P)
    pos = torch.logsumexp(pos.masked_fill(~valid, _NEG), dim=1)  # (B,)
    # video -> audio/text: one row per clip, columns are every usable pair of the global batch
    x2y = x @ y_all.reshape(-1, D).t() / temperature  # (B, W*B*P)
    x2y = torch.logsumexp(x2y.masked_fill(~valid_all.reshape(1, -1), _NEG), dim=1)  # (B,)
    # audio/text -> video: the clip's usable pairs against every video of the global batch
    y2x = torch.einsum("bpd,cd->bpc", y, x_all) / temperature  # (B, P, W*B)
    y2x = torch.logsumexp(y2x.masked_fill(~valid[:, :, None], _NEG).reshape(B, -1), dim=1)  # (B,)

    rows = valid.any(dim=1)  # (B,) r_i
    per_row = torch.where(rows, (x2y - pos) + (y2x - pos), torch.zeros_like(pos))
    n_rows = all_reduce_sum_no_grad(rows.sum().to(dtype))  # V, global
    W = world_size()
    local = per_row.sum() * (W / n_rows.clamp(min=1.0))  # L_r
    if W == 1:
        return local
    total = all_reduce_sum_no_grad(local) / W  # global L
    return local + (total - local.detach())


class NCELoss(nn.Module):
    """Symmetric NCE between video and audio in S_va (VATT); clips with ``audio_mask == 0`` drop out."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(
        self, video_va: torch.Tensor, audio_va: torch.Tensor, audio_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B = video_va.shape[0]
        valid = torch.ones(B, 1, dtype=torch.bool, device=video_va.device)
        if audio_mask is not None:
            valid = valid & (audio_mask.reshape(B, 1) > 0)
        return symmetric_milnce(video_va, audio_va[:, None], valid, self.temperature)


class MILNCELoss(nn.Module):
    """Symmetric MIL-NCE between video and P text positives in S_vt (VATT; MIL-NCE of Miech et al. 2020).

    ``text_vt`` is (B, P, D); slots with ``text_lengths == 0`` and clips with ``text_mask == 0`` drop out.
    """

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        video_vt: torch.Tensor,
        text_vt: torch.Tensor,
        text_lengths: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, P, _ = text_vt.shape
        valid = torch.ones(B, P, dtype=torch.bool, device=text_vt.device)
        if text_lengths is not None:
            valid = valid & (text_lengths > 0)
        if text_mask is not None:
            valid = valid & (text_mask.reshape(B, 1) > 0)
        return symmetric_milnce(video_vt, text_vt, valid, self.temperature)


class VattLoss(nn.Module):
    """VATT's pretraining objective: the weighted mean of NCE (video-audio) and MIL-NCE (video-text).

    Takes the model's named outputs and the batch's masks; returns ``{"loss", "loss_nce", "loss_milnce"}``
    with ``loss = (w_nce * loss_nce + w_milnce * loss_milnce) / (w_nce + w_milnce)`` (weights 1 and 1 in VATT).
    """

    def __init__(self, temperature: float = 0.07, nce_weight: float = 1.0, milnce_weight: float = 1.0):
        super().__init__()
        if nce_weight < 0 or milnce_weight < 0 or nce_weight + milnce_weight <= 0:
            raise ValueError("loss weights must be non-negative with a positive sum")
        self.nce = NCELoss(temperature)
        self.milnce = MILNCELoss(temperature)
        self.nce_weight, self.milnce_weight = nce_weight, milnce_weight

    def forward(
        self,
        video_va: torch.Tensor,
        video_vt: torch.Tensor,
        audio_va: torch.Tensor,
        text_vt: torch.Tensor,
        text_lengths: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        nce = self.nce(video_va, audio_va, audio_mask)
        milnce = self.milnce(video_vt, text_vt, text_lengths, text_mask)
        loss = (self.nce_weight * nce + self.milnce_weight * milnce) / (self.nce_weight + self.milnce_weight)
        return {"loss": loss, "loss_nce": nce, "loss_milnce": milnce}
