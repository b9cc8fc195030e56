"""Hybrid CTC/attention loss (Watanabe et al. 2017, "Hybrid CTC/attention architecture for end-to-end
speech recognition", Eq. 1; Kim et al. 2017):

    L = w * L_ctc + (1 - w) * L_att,        w = ctc_weight (default 0.1, as auto_avsr)

    L_ctc = (1/B) sum_b -log p_ctc(y_b | x_b)                       (sum over all CTC alignments, blank 0)
    L_att = (1/B) sum_b sum_l [ (1 - e) (-log p(y_bl | y_b<l, x_b)) + (e / V) sum_v (-log p(v | y_b<l, x_b)) ]

where the attention targets are y_b followed by eos and e = label_smoothing (default 0.1) spreads e
uniformly over all V outputs (``torch.nn.functional.cross_entropy``'s smoothing; ESPnet spreads it over
the V - 1 non-target outputs and reports the KL divergence, which differs by a constant). Both terms
are summed over an utterance and averaged over the batch, like ESPnet with ``normalize_length=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsr.masks import make_pad_mask
from avsr.model import IGNORE_ID
from avsr.units import BLANK


class HybridLoss(nn.Module):
    """``ctc_weight * CTC + (1 - ctc_weight) * label-smoothed CE``; returns named terms."""

    def __init__(self, ctc_weight: float = 0.1, label_smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight={ctc_weight} must be in [0, 1]")
        self.ctc_weight = ctc_weight
        self.label_smoothing = label_smoothing

    def forward(
        self,
        ctc_log_probs: Tensor,
        enc_lengths: Tensor,
        targets: Tensor,
        target_lengths: Tensor,
        dec_logits: Tensor | None = None,
        dec_targets: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``ctc_log_probs`` (B, T, V), ``enc_lengths`` (B,), ``targets`` (B, L) padded, ``target_lengths`` (B,),
        ``dec_logits`` (B, L + 1, V) and ``dec_targets`` (B, L + 1) with -1 padding, as the model returns them.

        Returns ``{"loss", "loss_ctc", "loss_att", "acc"}``; ``acc`` is the decoder's teacher-forced token
        accuracy (no gradient). The attention terms are absent when ``ctc_weight == 1``.
        """
        b = ctc_log_probs.shape[0]
        out: dict[str, Tensor] = {}
        total = ctc_log_probs.new_zeros(())
        if self.ctc_weight > 0:
            tgt = targets.masked_fill(make_pad_mask(target_lengths, targets.shape[1]), 0)
            loss_ctc = (
                F.ctc_loss(
                    ctc_log_probs.transpose(0, 1),  # (T, B, V)
                    tgt,
                    enc_lengths,
                    target_lengths,
                    blank=BLANK,
                    reduction="sum",
                    zero_infinity=True,  # an utterance too short for its transcript adds 0, not inf
                )
                / b
            )
            out["loss_ctc"] = loss_ctc
            total = total + self.ctc_weight * loss_ctc
        if self.ctc_weight < 1:
            if dec_logits is None or dec_targets is None:
                raise ValueError("ctc_weight < 1 needs dec_logits and dec_targets (call the model with targets)")
            loss_att = (
                F.cross_entropy(
                    dec_logits.flatten(0, 1),
                    dec_targets.flatten(),
                    ignore_index=IGNORE_ID,
                    label_smoothing=self.label_smoothing,
                    reduction="sum",
                )
                / b
            )
            out["loss_att"] = loss_att
            total = total + (1 - self.ctc_weight) * loss_att
            with torch.no_grad():
                real = dec_targets != IGNORE_ID
                out["acc"] = (dec_logits.argmax(-1) == dec_targets)[real].float().mean()
        out["loss"] = total
        return out
