"""AVSR front-ends as downstream towers: clip features for the harness's probes.

An ``avsr_frontend`` export (``pretrain.py objective=moco`` or ``objective=wav2vec2``) holds the visual
front-end (3D stem + ResNet over grayscale mouth crops) or the audio front-end (wav2vec 2.0 over the
waveform) of an AVSR model, and the LRS2 preprocessing it was trained with. :class:`FrontendTower` reads
a downstream example as :class:`data.lrs2.LRS2Dataset` reads an utterance in evaluation (every frame at
the export's frame rate; the fixed mouth box, resized, centre-cropped and normalised; or the waveform at
its sample rate), runs the front-end, and averages its per-frame features over each of ``SEGMENTS``
consecutive stretches of the clip's real frames, concatenated: an LRW clip centres its word among its
neighbours, and one mean over all frames would mix them; three keep the coarse order (beginning, word,
end) that a linear probe can use.
``init="random"`` builds the same front-end from a seed instead of loading its weights.

It offers what :class:`eval.downstream.harness.FeatureCache` asks of a tower (:meth:`decode`,
:meth:`item_features`) for clip-level tasks and the linear, few-shot and k-NN protocols; it has no text
tower (no zero-shot) and no frame features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from avsr.build import build_audio_frontend, build_video_frontend
from avsr.config import AvsrConfig
from data.collate import FailureTracker, ItemFailure
from data.downstream.task import Example
from data.lrs2 import LRS2Config, MouthTransform, fixed_mouth_box, pad_stack
from data.media import MediaError, MediaReader
from eval.downstream.towers import ClipFeatures
from train.export import ExportError, read_export

STREAMS = {"video": ("v", "video_frontend."), "audio": ("a", "audio_frontend.")}
SEGMENTS = 3


def load_frontend_tower(
    export: str | Path, modality: str, *, init: str = "pretrained", seed: int = 0, device: str | torch.device = "cpu"
) -> FrontendTower:
    """The front-end in the ``avsr_frontend`` export at ``export`` as the ``modality`` tower, in eval mode."""
    if modality not in STREAMS:
        raise ValueError(f"tower must be 'video' or 'audio' for a front-end export, got {modality!r}")
    if init not in ("pretrained", "random"):
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    exp = read_export(export, kind="avsr_frontend")
    stream, prefix = STREAMS[modality]
    if exp.extra.get("stream") != stream:
        raise ExportError(f"export {str(export)!r} holds the {exp.extra.get('stream')!r} front-end, not the {modality}")
    try:
        lrs2 = LRS2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in exp.preprocess.items()})
        cfg = AvsrConfig(**exp.overrides, fps=lrs2.fps, sample_rate=lrs2.sample_rate)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"export {str(export)!r} has an unusable front-end config: {exc}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        frontend = build_video_frontend(cfg) if modality == "video" else build_audio_frontend(cfg)
    if init == "pretrained":
        weights = {k[len(prefix) :]: v for k, v in exp.state_dict.items() if k.startswith(prefix)}
        try:
            frontend.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            raise ExportError(f"export {str(export)!r} weights do not fit its front-end: {exc}") from None
    return FrontendTower(frontend.to(device).eval(), modality, lrs2)


class FrontendTower(nn.Module):
    """A visual or audio AVSR front-end reading downstream examples; features are per-frame outputs averaged
    over each of ``segments`` consecutive stretches of the real frames and concatenated (``dim`` wide)."""

    tokenizer = None  # no text tower: the harness leaves zero-shot out

    def __init__(self, frontend: nn.Module, modality: str, lrs2: LRS2Config, segments: int = SEGMENTS) -> None:
        super().__init__()
        self.frontend, self.modality, self.lrs2 = frontend, modality, lrs2
        self.segments = segments
        self.dim = segments * int(frontend.out_dim)
        self.mouth = MouthTransform(dataclasses.replace(lrs2, hflip_prob=0.0), train=False)

    @property
    def device(self) -> torch.device:
        return next(self.frontend.parameters()).device

    def decode(self, examples: Sequence[Example], *, progress: bool = True) -> list[dict[str, Any] | ItemFailure]:
        """Mouth crops (T, 1, crop, crop) or waveforms (S,) of ``examples``; an :class:`ItemFailure` for a file
        that cannot be read."""
        bar = tqdm(examples, desc=f"decode {self.modality}", unit="item", disable=not progress, leave=False)
        return [self._decode(i, ex) for i, ex in enumerate(bar)]

    def _decode(self, index: int, ex: Example) -> dict[str, Any] | ItemFailure:
        cfg = self.lrs2
        try:
            if ex.path is None:
                raise MediaError("a front-end tower reads media files; this example has no path")
            with MediaReader(ex.path) as reader:
                start = ex.start or 0.0
                end = ex.end if ex.end is not None else reader.video_seconds(limit=cfg.max_seconds)
                frames = max(1, round((end - start) * cfg.fps))
                if self.modality == "video":
                    video = reader.read_video(start, frames, cfg.fps)  # (T, 3, H, W) uint8
                    return {"input": self.mouth(fixed_mouth_box(video, cfg.mouth_box))}  # (T, 1, crop, crop)
                if not reader.info.has_audio:
                    raise MediaError(f"no audio stream: {ex.path}")
                return {"input": reader.read_audio(start, round(frames * cfg.sample_rate / cfg.fps), cfg.sample_rate)}
        except MediaError as exc:
            return ItemFailure(str(ex.path), str(exc), index)

    @torch.no_grad()
    def item_features(
        self,
        items: Sequence[dict[str, Any] | ItemFailure],
        *,
        pool: str = "agg",
        hop: float | None = None,
        batch_size: int = 16,
        progress: bool = True,
        max_fail_fraction: float = 0.01,
    ) -> ClipFeatures:
        """Clip features (K, D) of the items that decoded, and their positions ``kept``. ``pool`` is accepted
        for the harness's sake: a front-end has one pooling, the segment means of :func:`segment_means`."""
        if hop is not None:
            raise ValueError("a front-end tower gives clip features only, not frame features")
        failures = FailureTracker(max_fail_fraction=max_fail_fraction)
        good = [i for i, it in enumerate(items) if not isinstance(it, ItemFailure)]
        bad = [(it.path, it.reason) for it in items if isinstance(it, ItemFailure)]
        failures.update({"ids": good, "failures": bad}, check=False)
        failures.check(final=True)
        outs: list[torch.Tensor] = []
        steps = range(0, len(good), batch_size)
        for s in tqdm(steps, desc=f"{self.modality} front-end", unit="batch", disable=not progress, leave=False):
            chunk = [items[i]["input"] for i in good[s : s + batch_size]]
            lengths = torch.tensor([x.shape[0] for x in chunk], device=self.device)
            feats, frames = self.frontend(pad_stack(chunk).to(self.device), lengths)  # (B, T, D), (B,)
            outs.append(segment_means(feats, frames, self.segments).flatten(1))
        features = torch.cat(outs).cpu() if outs else torch.zeros(0, self.dim)
        return ClipFeatures(features, torch.tensor(good, dtype=torch.int64))


def segment_means(x: torch.Tensor, lengths: torch.Tensor, segments: int) -> torch.Tensor:
    """(B, T, D) frames with ``lengths`` real ones -> (B, segments, D): segment s averages the real frames
    ``[s n // segments, (s + 1) n // segments)`` of a clip of n, at least the first of them when n < segments."""
    t = torch.arange(x.shape[1], device=x.device)
    n = lengths.to(x.device)[:, None]  # (B, 1)
    s = torch.arange(segments, device=x.device)[None]  # (1, S)
    start = torch.minimum(s * n // segments, n - 1)
    end = torch.maximum((s + 1) * n // segments, start + 1)  # (B, S)
    inside = (t[None, None] >= start[..., None]) & (t[None, None] < end[..., None])  # (B, S, T)
    weights = inside.to(x.dtype) / inside.sum(-1, keepdim=True).to(x.dtype)
    return torch.einsum("bst,btd->bsd", weights, x)
