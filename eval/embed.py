"""Embed a manifest's videos, audio and captions with a VATT model for retrieval.

A video's embedding is the mean of the embeddings of ``clips_per_video`` uniformly spaced clips
(VATT's zero-shot protocol uses 4), L2-normalised again; its audio embedding is the same mean over the
clips that have audio. Each caption is embedded on its own. Clips are decoded by
:class:`data.manifest.ManifestDataset` in eval mode, exactly as in pretraining's evaluation; files
that fail to decode are skipped and counted (:class:`data.collate.FailureTracker`), and a video with
no decodable clip leaves the gallery together with its captions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data.collate import FailureTracker, collate
from data.collate import batch_size as num_good
from data.manifest import ManifestDataset, ManifestEntry, clip_starts, parse_entry, read_manifest
from data.media import MediaError, load_audio
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig, standardize_audio

logger = logging.getLogger(__name__)


@dataclass
class VideoEmbeddings:
    """Per-video embeddings of the videos that decoded (``rows`` index the input entries)."""

    rows: torch.Tensor  # (V,) int64, position of each kept video in the input entries
    video_vt: torch.Tensor  # (V, D_vt)
    video_va: torch.Tensor  # (V, D_va)
    audio_va: torch.Tensor  # (V, D_va); zeros where has_audio is False
    has_audio: torch.Tensor  # (V,) bool
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ManifestEmbeddings:
    """A retrieval gallery: the videos that decoded, their embeddings and every caption of theirs."""

    entries: list[ManifestEntry]  # (V,) the videos in the gallery, in manifest order
    video_vt: torch.Tensor  # (V, D_vt)
    video_va: torch.Tensor  # (V, D_va)
    audio_va: torch.Tensor  # (V, D_va)
    has_audio: torch.Tensor  # (V,) bool
    text_vt: torch.Tensor  # (N, D_vt), one row per caption
    caption_video: torch.Tensor  # (N,) int64, row of the caption's video
    captions: list[str]  # (N,)
    failures: list[tuple[str, str]] = field(default_factory=list)


@torch.inference_mode()
def embed_videos(
    model: torch.nn.Module,
    entries: Sequence[ManifestEntry],
    preprocess: PreprocessConfig,
    *,
    clips_per_video: int = 4,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    max_fail_fraction: float = 0.01,
    progress: bool = True,
) -> VideoEmbeddings:
    """Mean of ``clips_per_video`` uniformly spaced clip embeddings per video, L2-normalised."""
    dataset = ManifestDataset(list(entries), preprocess, tokenizer=None, train=False, clips_per_video=clips_per_video)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    tracker = FailureTracker(max_fail_fraction=max_fail_fraction, min_attempts=len(dataset) + 1)
    n = len(entries)
    sums: dict[str, torch.Tensor] = {}
    clip_count = torch.zeros(n)
    audio_count = torch.zeros(n)
    bar = tqdm(loader, desc="embed videos", unit="batch", disable=not progress, leave=False)
    for batch in bar:
        tracker.update(batch)  # logs each bad file once; judged over the whole set below
        if num_good(batch) == 0:
            continue
        idx = batch["video_index"]  # (B,)
        out = model.encode_video(batch["video"].to(device))
        out.update(model.encode_audio(batch["audio"].to(device)))
        amask = batch["audio_mask"]  # (B,)
        for key, emb in out.items():
            emb = emb.float().cpu()
            if key == "audio_va":
                emb = emb * amask[:, None]  # clips without audio add nothing
            if key not in sums:
                sums[key] = torch.zeros(n, emb.shape[1])
            sums[key].index_add_(0, idx, emb)
        clip_count.index_add_(0, idx, torch.ones(len(idx)))
        audio_count.index_add_(0, idx, amask)
    tracker.check(final=True)
    keep = torch.nonzero(clip_count > 0).squeeze(1)  # (V,)
    if len(keep) < n:
        logger.warning("%d of %d videos had no decodable clip and are left out of the gallery", n - len(keep), n)
    if len(keep) == 0:
        first = next(iter(tracker.failed_paths.values()), "no clips")
        raise MediaError(f"no video could be decoded ({first})")
    has_audio = audio_count[keep] > 0
    return VideoEmbeddings(
        rows=keep,
        video_vt=F.normalize(sums["video_vt"][keep], dim=-1),
        video_va=F.normalize(sums["video_va"][keep], dim=-1),
        audio_va=F.normalize(sums["audio_va"][keep], dim=-1) * has_audio[:, None],
        has_audio=has_audio,
        failures=list(tracker.failed_paths.items()),
    )


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_len: int,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """``text_vt`` (N, D_vt) for each text, tokenized to at most ``max_len`` tokens.

    Each distinct text is embedded once, so equal texts get equal vectors (a matmul's rounding can
    differ between rows of one batch) and a gallery of repeated captions costs less.
    """
    unique = list(dict.fromkeys(texts))
    out = []
    starts = range(0, len(unique), batch_size)
    for s in tqdm(starts, desc="embed captions", unit="batch", disable=not progress or len(starts) < 2, leave=False):
        ids, lengths = tokenizer.encode_batch(unique[s : s + batch_size], max_len)  # (b, L), (b,)
        empty = lengths == 0
        if bool(empty.any()):
            raise ValueError(f"text {unique[s + int(torch.nonzero(empty)[0, 0])]!r} has no tokens")
        out.append(model.encode_text(ids.to(device), lengths.to(device))["text_vt"].float().cpu())
    if not out:
        return torch.zeros(0, 0)
    row = {text: i for i, text in enumerate(unique)}
    return torch.cat(out)[torch.tensor([row[t] for t in texts], dtype=torch.int64)]


def embed_manifest(
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    tokenizer: Tokenizer | None,
    manifest: str | Path | Sequence[ManifestEntry],
    *,
    clips_per_video: int = 4,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    max_fail_fraction: float = 0.01,
    progress: bool = True,
) -> ManifestEmbeddings:
    """Embed every video (and its audio) and every caption of a manifest; see :func:`embed_videos`."""
    entries = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    vids = embed_videos(
        model,
        entries,
        preprocess,
        clips_per_video=clips_per_video,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        max_fail_fraction=max_fail_fraction,
        progress=progress,
    )
    kept = [entries[i] for i in vids.rows.tolist()]
    captions = [c.text for e in kept for c in e.captions if c.text.strip()]
    caption_video = torch.tensor(
        [row for row, e in enumerate(kept) for c in e.captions if c.text.strip()], dtype=torch.int64
    )
    if captions and tokenizer is None:
        raise ValueError("the manifest has captions but no tokenizer was given to embed them")
    text_vt = torch.zeros(0, vids.video_vt.shape[1])
    if captions:
        text_vt = embed_texts(
            model, tokenizer, captions, preprocess.max_text_len, batch_size=256, device=device, progress=progress
        )
    return ManifestEmbeddings(
        entries=kept,
        video_vt=vids.video_vt,
        video_va=vids.video_va,
        audio_va=vids.audio_va,
        has_audio=vids.has_audio,
        text_vt=text_vt,
        caption_video=caption_video,
        captions=captions,
        failures=vids.failures,
    )


def embed_video_file(
    model: torch.nn.Module,
    path: str | Path,
    preprocess: PreprocessConfig,
    *,
    clips_per_video: int = 4,
    device: str | torch.device = "cpu",
) -> VideoEmbeddings:
    """One media file (a query by example) embedded like a gallery video; raises MediaError if unreadable."""
    entry = parse_entry({"media": str(Path(path).resolve())}, Path.cwd(), str(path))
    return embed_videos(
        model,
        [entry],
        preprocess,
        clips_per_video=clips_per_video,
        batch_size=clips_per_video,
        device=device,
        max_fail_fraction=1.0,  # a failure raises MediaError with its reason instead
        progress=False,
    )


@torch.inference_mode()
def embed_audio_file(
    model: torch.nn.Module,
    path: str | Path,
    preprocess: PreprocessConfig,
    *,
    clips_per_video: int = 4,
    device: str | torch.device = "cpu",
    max_seconds: float | None = 60.0,
) -> torch.Tensor:
    """``audio_va`` (1, D_va) of an audio or video file: the mean of uniformly spaced clips, L2-normalised.

    Only the first ``max_seconds`` of the file are decoded and the clips spread over them (None: the
    whole file, however long), so a query cannot exhaust the memory.
    """
    wave = load_audio(path, preprocess.sample_rate, max_seconds).clamp_(-1.0, 1.0)  # (S,), as clips are
    length = preprocess.audio_samples
    if wave.shape[0] < length:
        wave = F.pad(wave, (0, length - wave.shape[0]))
    slack = wave.shape[0] - length
    n = clips_per_video if slack > 0 else 1
    starts = [round(start) for start in clip_starts(slack, n)]  # as ManifestDataset places eval clips
    clips = torch.stack([wave[s : s + length] for s in starts])  # (n, S)
    if preprocess.audio_standardize:
        clips = standardize_audio(clips)
    emb = model.encode_audio(clips.to(device))["audio_va"].float().cpu()  # (n, D_va)
    return F.normalize(emb.mean(dim=0, keepdim=True), dim=-1)
