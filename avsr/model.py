"""The hybrid CTC/attention AVSR model (Watanabe et al. 2017; Ma et al. 2023, auto_avsr).

Data flow::

    video (B, T, C, H, W), video_lengths ──> visual front-end ──> (B, T, Dv) ─┐
    audio (B, S), audio_lengths ───────────> audio front-end ──> (B, T, Da) ─┴─> fusion (modality dropout)
        ──> (B, T, D) ──> encoder (Conformer | transformer) ──> enc_out (B, T, D), enc_lengths (B,)
        ├─> CTC head ──> ctc_log_probs (B, T, V)
        └─> attention decoder (teacher forcing on [sos] + targets) ──> dec_logits (B, L + 1, V)

Use::

    model = avsr.create_model("avsr_conformer_small", vocab_size=tokens.vocab_size)
    out = model(video, video_lengths, audio, audio_lengths, targets, target_lengths)        # training
    losses = avsr.HybridLoss()(**out, targets=targets, target_lengths=target_lengths)
    enc = model.encode(video, video_lengths, audio, audio_lengths, modality="v")            # inference
    hyps = avsr.decoding.beam_search(model, enc, beam_size=10, ctc_weight=0.1)   # list (B) of n-best lists
    text = tokens.decode(hyps[0][0].tokens)                                         # tokens: avsr.TokenSet

Hooks for a training script::

    model.load_frontend_state("v", read_export(path, kind="vatt").state_dict)  # VATT tower init (or "a")
    model.load_avsr_state(read_export(path, kind="avsr").state_dict)  # start from a trained (unimodal) model
    model.set_frontend_frozen(True)   # for the first N steps, then set_frontend_frozen(False)
    avsr.create_model(model.model_name, **model.overrides)                  # what an export rebuilds

Sequence length: one encoder frame per video frame. With video present, ``enc_lengths = video_lengths``
and audio features are cut or zero-padded to the video's frames; audio alone gives
``ceil(audio_lengths / (sample_rate // fps))`` frames. ``modality`` ("a", "v", "av"; default: every stream
the model has) selects the streams; an absent stream is zeros at the fusion, exactly as modality
dropout does in training, so one model serves all three. Targets are unit ids (``avsr.units.TokenSet``),
(B, L) padded with anything, with their lengths.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsr.config import AvsrConfig
from avsr.decoder import TransformerDecoder
from avsr.fusion import MODALITIES, Fusion
from avsr.masks import make_pad_mask

IGNORE_ID = -1  # padding of decoder targets


class AvsrModel(nn.Module):
    """Front-ends, fusion, encoder, CTC head and attention decoder, built elsewhere and passed in."""

    def __init__(
        self,
        cfg: AvsrConfig,
        video_frontend: nn.Module | None,
        audio_frontend: nn.Module | None,
        fusion: Fusion,
        encoder: nn.Module,
        ctc_head: nn.Linear,
        decoder: TransformerDecoder,
        model_name: str = "",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.model_name = model_name or cfg.name
        self.overrides = dict(overrides or {})  # with model_name: enough to rebuild via create_model
        self.video_frontend = video_frontend
        self.audio_frontend = audio_frontend
        self.fusion = fusion
        self.encoder = encoder
        self.ctc_head = ctc_head
        self.decoder = decoder
        self.sos = self.eos = cfg.vocab_size - 1
        self._frozen = {"v": False, "a": False}

    # ---- front-end control -------------------------------------------------------------------------
    def _frontend(self, m: str) -> nn.Module | None:
        return self.video_frontend if m == "v" else self.audio_frontend

    def set_frontend_frozen(self, frozen: bool, modalities: str = "av") -> None:
        """Freeze (no gradients, eval-mode batch norm, run under no_grad) or unfreeze front-ends.

        A training loop calls ``set_frontend_frozen(True)`` before step 0 and ``False`` after N steps.
        Under DDP the frozen phase needs ``find_unused_parameters=True``.
        """
        for m in modalities:
            fe = self._frontend(m)
            if fe is not None:
                fe.requires_grad_(not frozen)
                self._frozen[m] = frozen
                fe.train(self.training and not frozen)

    def train(self, mode: bool = True) -> AvsrModel:
        super().train(mode)
        for m, frozen in self._frozen.items():
            fe = self._frontend(m)
            if frozen and fe is not None:
                fe.eval()
        return self

    def load_frontend_state(self, modality: str, state_dict: dict[str, Tensor], prefix: str | None = None) -> None:
        """Initialise the ``"a"`` or ``"v"`` front-end from pretrained weights (e.g. a VATT export's state dict).

        VATT front-ends pick their tower by the prefix (default ``video_tower.`` / ``audio_tower.``); the
        wav2vec 2.0 front-end takes a torchaudio ``Wav2Vec2Model`` state dict; the others their own keys.
        """
        fe = self._frontend(modality)
        if fe is None:
            raise ValueError(f"this model has no {modality!r} front-end (modalities={self.cfg.modalities!r})")
        own = f"{'video' if modality == 'v' else 'audio'}_frontend."
        if prefix == own:  # another AVSR model's front-end, under this model's own names: load as is
            fe.load_state_dict({k[len(own) :]: v for k, v in state_dict.items() if k.startswith(own)}, strict=True)
        elif hasattr(fe, "load_pretrained") and prefix is None:
            fe.load_pretrained(state_dict)
        elif hasattr(fe, "load_pretrained"):
            fe.load_pretrained(state_dict, prefix)
        else:
            p = prefix or ""
            fe.load_state_dict({k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}, strict=True)

    def load_avsr_state(self, state_dict: dict[str, Tensor]) -> list[str]:
        """Start from a trained AVSR model of the same sizes, with the same or other streams.

        Every weight whose name and shape match is copied; the fusion's first layer takes that model's
        columns for the streams both models have and zeros for the others. So a model started from an
        audio-only one computes in evaluation exactly what that one computes, whatever the video, and
        training teaches it the new stream (auto_avsr starts its audio-visual models from unimodal ones).
        Returns the names of the entries left as they were (e.g. the new stream's front-end).
        """
        own = self.state_dict()
        first = "fusion.mlp.0.weight"
        loaded: dict[str, Tensor] = {}
        for name, value in state_dict.items():
            if name not in own or name == first:
                continue  # e.g. the front-end of a stream this model does not have
            if own[name].shape != value.shape:
                raise ValueError(f"{name}: shape {tuple(value.shape)} in the source, {tuple(own[name].shape)} here")
            loaded[name] = value
        src, weight, col = state_dict[first], torch.zeros_like(own[first]), 0
        for m, norm in (("v", "fusion.video_norm.weight"), ("a", "fusion.audio_norm.weight")):
            if norm not in state_dict:
                continue  # the source has no such stream
            width = state_dict[norm].shape[0]  # the source's columns are [video; audio], as here
            if m in self.cfg.modalities:
                weight[:, self.fusion.columns(m)] = src[:, col : col + width]
            col += width
        if col != src.shape[1]:
            raise ValueError(f"{first}: {src.shape[1]} input columns in the source, its streams need {col}")
        loaded[first] = weight
        self.load_state_dict(loaded, strict=False)
        return sorted(set(own) - set(loaded))

    # ---- forward -----------------------------------------------------------------------------------
    def _run_frontend(self, m: str, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        fe = self._frontend(m)
        ctx = torch.no_grad() if self._frozen[m] else contextlib.nullcontext()
        with ctx:
            return fe(x, lengths)

    def _check_modality(self, modality: str | None) -> str:
        modality = modality or self.cfg.modalities
        if modality not in MODALITIES or not set(modality) <= set(self.cfg.modalities):
            raise ValueError(f"modality {modality!r} is not available; this model has {self.cfg.modalities!r}")
        return modality

    def encode(
        self,
        video: Tensor | None = None,
        video_lengths: Tensor | None = None,
        audio: Tensor | None = None,
        audio_lengths: Tensor | None = None,
        modality: str | None = None,
    ) -> dict[str, Tensor]:
        """Inputs -> ``{"enc_out" (B, T, D), "enc_lengths" (B,), "ctc_log_probs" (B, T, V)}``."""
        modality = self._check_modality(modality)
        v = a = None
        if "v" in modality:
            if video is None or video_lengths is None:
                raise ValueError(f"modality {modality!r} needs video and video_lengths")
            v, lengths = self._run_frontend("v", video, video_lengths)  # (B, T, Dv)
        if "a" in modality:
            if audio is None or audio_lengths is None:
                raise ValueError(f"modality {modality!r} needs audio and audio_lengths")
            a, a_lengths = self._run_frontend("a", audio, audio_lengths)  # (B, Ta, Da)
            if v is None:
                lengths = a_lengths
            else:  # one frame per video frame: cut or zero-pad the audio frames
                t = v.shape[1]
                a = F.pad(a[:, :t], (0, 0, 0, max(0, t - a.shape[1])))
                a = a.masked_fill(make_pad_mask(torch.minimum(a_lengths, lengths), t)[:, :, None], 0.0)
        x = self.fusion(v, a)  # (B, T, D)
        x, lengths = self.encoder(x, lengths)
        ctc_log_probs = self.ctc_head(x).log_softmax(-1)  # (B, T, V)
        return {"enc_out": x, "enc_lengths": lengths, "ctc_log_probs": ctc_log_probs}

    def decoder_io(self, targets: Tensor, target_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forcing input ``[sos] + y`` and output ``y + [eos]`` (IGNORE_ID-padded), both (B, L + 1)."""
        b, l = targets.shape
        pad = make_pad_mask(target_lengths, l)  # (B, L)
        ys = targets.masked_fill(pad, self.eos)
        ys_in = torch.cat([ys.new_full((b, 1), self.sos), ys], dim=1)  # (B, L + 1)
        ys_out = torch.cat([targets.masked_fill(pad, IGNORE_ID), targets.new_full((b, 1), IGNORE_ID)], dim=1)
        ys_out.scatter_(1, target_lengths[:, None], self.eos)
        return ys_in, ys_out

    def forward(
        self,
        video: Tensor | None = None,
        video_lengths: Tensor | None = None,
        audio: Tensor | None = None,
        audio_lengths: Tensor | None = None,
        targets: Tensor | None = None,
        target_lengths: Tensor | None = None,
        modality: str | None = None,
    ) -> dict[str, Tensor]:
        """Training forward: ``{"ctc_log_probs", "enc_lengths", "dec_logits", "dec_targets"}`` (decoder terms
        only when targets are given), the names :class:`avsr.loss.HybridLoss` takes."""
        enc = self.encode(video, video_lengths, audio, audio_lengths, modality)
        out = {"ctc_log_probs": enc["ctc_log_probs"], "enc_lengths": enc["enc_lengths"]}
        if targets is not None:
            if target_lengths is None:
                raise ValueError("targets need target_lengths")
            ys_in, ys_out = self.decoder_io(targets, target_lengths)
            out["dec_logits"] = self.decoder(ys_in, enc["enc_out"], enc["enc_lengths"])  # (B, L + 1, V)
            out["dec_targets"] = ys_out
        return out
