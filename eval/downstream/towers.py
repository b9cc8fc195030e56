"""Features from one tower of a VATT export, decoded with the preprocessing the export was trained with.

:func:`load_tower` gives a :class:`Tower`: the video, audio or text tower of an export (its pretrained
weights, or the random-init twin of the same architecture) and one way to turn downstream
:class:`~data.downstream.task.Example` s into features before the FAC head:

- clip level (:meth:`Tower.clip_features`): the AGG token ("agg") or the mean of the output tokens ("mean");
- frame level (:meth:`Tower.frame_features`): one row per ``hop`` seconds from the example's start, each the
  mean of the tokens whose centre falls in that hop (see :func:`resample_tokens`);
- end to end (:meth:`Tower.dataset`, :meth:`Tower.collate`, :meth:`Tower.forward_batch`): decoded tensors and a
  differentiable forward, so a fine-tune decodes exactly as the probes do.

Decoding. Video: ``num_frames`` frames spread uniformly over ``[start, end]`` (the whole file when unset;
frame k is the one on screen at the centre of the k-th of ``num_frames`` equal slices), resized and
centre-cropped by the export's eval transform. The frame count is the trained one whatever the
example's length, because the temporal position table was learned for it. Audio: the example at the
export's sample rate, cut into consecutive windows of the pretraining clip's length
(``num_frames / fps * sample_rate`` samples): windows keep the positions as trained (the audio tower would
otherwise stretch its position table). Text: the export's tokenizer, at most ``max_text_len`` tokens.

Files that fail to decode are skipped, logged once and counted (:class:`data.collate.FailureTracker`);
the feature methods return the positions of the examples they kept, so a caller keeps the labels of
those rows only (``labels[kept]``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from data.collate import FailureTracker, ItemFailure
from data.downstream.task import Example, Modality
from data.media import MediaError, MediaReader, load_audio
from data.tokenizer import Tokenizer
from data.transforms import AudioTransform, PreprocessConfig, VideoTransform, standardize_audio
from eval.vatt_export import VattExport, load_vatt_export
from train.export import ExportError

logger = logging.getLogger(__name__)

Init = Literal["pretrained", "random"]
Pool = Literal["agg", "mean"]

# Frames further apart than this (seconds) are read with one seek each instead of decoding the whole
# segment: four frames spread over an hour-long video should not decode every frame of the hour.
_SPARSE_GAP = 1.0
# A duration within this fraction of a hop of a whole number of hops gets no extra, empty row.
_ROW_TOLERANCE = 1e-6


class ClipFeatures(NamedTuple):
    """Clip features of the examples that decoded: ``features`` (K, D) and ``kept`` (K,) int64, the
    position of each row's example in the input (increasing). Unpacks as ``features, kept``."""

    features: torch.Tensor
    kept: torch.Tensor


class FrameFeatures(NamedTuple):
    """Frame features of the examples that decoded: ``features`` K tensors (T_i, D), one row per hop,
    and ``kept`` (K,) int64 as in :class:`ClipFeatures`."""

    features: list[torch.Tensor]
    kept: torch.Tensor


def load_tower(
    export: str | Path,
    tower: Modality,
    *,
    init: Init = "pretrained",
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tower:
    """The ``tower`` of the VATT export at ``export``, in eval mode on ``device``.

    ``init="random"`` builds the export's architecture (``vatt.create_model(name, **overrides)``) under
    ``torch.manual_seed(seed)`` without loading its weights: the random-init baseline of the same model,
    one per seed. The caller's random state is left as it was.
    """
    if tower not in ("video", "audio", "text"):
        raise ValueError(f"tower must be 'video', 'audio' or 'text', got {tower!r}")
    if init == "pretrained":
        exp = load_vatt_export(export, device)
    elif init == "random":
        exp = load_vatt_export(export, device, random_seed=seed)
    else:
        raise ValueError(f"init must be 'pretrained' or 'random', got {init!r}")
    if tower == "text" and exp.tokenizer is None:
        raise ExportError(f"export {str(export)!r} has no tokenizer: its text tower cannot read text")
    return Tower(exp, tower, init=init, seed=seed)


class Tower(nn.Module):
    """One tower of a VATT model with the export's decoding; outputs are taken before the FAC head.

    Its parameters are the tower's own plus, for a shared-weight (VATT-MA) model, the shared encoder,
    so an optimizer over ``parameters()`` trains everything the tower's output depends on. ``model`` is
    the whole VATT model (other towers, FAC heads: zero-shot needs them); it is not a submodule.
    ``last_failures`` lists (path, reason) of the examples the latest feature call skipped.
    """

    def __init__(self, export: VattExport, modality: Modality, *, init: Init = "pretrained", seed: int = 0) -> None:
        super().__init__()
        model = export.model
        object.__setattr__(self, "model", model)  # unregistered: parameters() stay the tower's
        self.modality: Modality = modality
        self.net = getattr(model, f"{modality}_tower")
        self.shared = model.encoder if model.cfg.shared_encoder else None
        self.dim: int = self.net.embed_dim
        self.preprocess: PreprocessConfig = export.preprocess
        self.tokenizer: Tokenizer | None = export.tokenizer
        self.fingerprint = export.fingerprint
        self.path = export.path
        self.init, self.seed = init, seed
        self.last_failures: list[tuple[str, str]] = []
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- decoding ----------------------------------------------------------------------------------

    def dataset(self, examples: Sequence[Example], train: bool = False) -> TowerDataset:
        """Decoded inputs of ``examples`` (see :class:`TowerDataset`); batch them with :meth:`collate`."""
        return TowerDataset(examples, self.modality, self.preprocess, self.tokenizer, train)

    @staticmethod
    def collate(items: Sequence[dict[str, Any] | ItemFailure]) -> dict[str, Any]:
        """Batch :class:`TowerDataset` items; see :func:`collate_items`."""
        return collate_items(items)

    # -- forward -----------------------------------------------------------------------------------

    def forward_batch(self, batch: dict[str, Any], pool: Pool = "agg", max_inputs: int | None = None) -> torch.Tensor:
        """Features (B, D) of a collated batch, differentiable (no ``no_grad`` inside).

        Audio: each window's feature, averaged over the example's windows weighted by the samples of real
        audio each holds (a short tail window counts for its length, not as a full window). "mean" pools
        the tokens that cover real audio, not the padding. ``max_inputs`` caps the clips, windows or texts
        per pass through the tower (None: all at once).
        """
        if pool not in ("agg", "mean"):
            raise ValueError(f"pool must be 'agg' or 'mean', got {pool!r}")
        B = len(batch["index"])
        if self.modality == "video":
            out = self._run(max_inputs, batch["video"])
            return out["pooled"] if pool == "agg" else out["tokens"].mean(dim=1)
        if self.modality == "text":
            ids, lengths = batch["text_ids"], batch["text_lengths"]
            out = self._run(max_inputs, ids, lengths)
            if pool == "agg":
                return out["pooled"]
            real = (torch.arange(ids.shape[1], device=self.device) < lengths.to(self.device)[:, None]).float()
            return (out["tokens"] * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True)
        lengths = batch["audio_lengths"].to(self.device)  # (R,) real samples per window
        out = self._run(max_inputs, batch["audio"])
        if pool == "agg":
            per_window = out["pooled"]  # (R, D)
        else:
            n_tok = out["tokens"].shape[1]
            real_tokens = torch.div(lengths + self.net.patch - 1, self.net.patch, rounding_mode="floor")
            real = (torch.arange(n_tok, device=self.device) < real_tokens.clamp(1, n_tok)[:, None]).float()
            per_window = (out["tokens"] * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True)
        owner = batch["window_item"].to(self.device)  # (R,) row of each window's example
        weight = lengths.to(per_window.dtype)
        sums = per_window.new_zeros(B, per_window.shape[1]).index_add(0, owner, per_window * weight[:, None])
        total = weight.new_zeros(B).index_add(0, owner, weight)
        return sums / total[:, None]  # (B, D)

    def forward(self, batch: dict[str, Any], pool: Pool = "agg") -> torch.Tensor:
        return self.forward_batch(batch, pool)

    def _run(self, max_inputs: int | None, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tower on ``inputs`` (first axis: clips, windows or texts) in chunks of ``max_inputs``."""
        inputs = tuple(x.to(self.device) for x in inputs)
        n = inputs[0].shape[0]
        step = max_inputs or n
        outs = [self.net(*(x[i : i + step] for x in inputs)) for i in range(0, n, step)]
        if len(outs) == 1:
            return outs[0]
        return {k: torch.cat([o[k] for o in outs]) for k in ("tokens", "pooled")}

    def _frame_rows(self, batch: dict[str, Any], hop: float, max_inputs: int | None) -> list[torch.Tensor]:
        """(T_i, D) per example of a collated batch: tokens placed in time, then :func:`resample_tokens`."""
        rows = []
        durations = batch["duration"].tolist()
        if self.modality == "video":
            t, h, w = self.net.token_grid(self.preprocess.num_frames, self.preprocess.image_size)
            tokens = self._run(max_inputs, batch["video"])["tokens"]  # (B, t*h*w, D), (t, h, w) raster
            temporal = tokens.reshape(tokens.shape[0], t, h * w, -1).mean(dim=2)  # (B, t, D)
            for b, duration in enumerate(durations):
                edges = torch.linspace(0.0, duration, t + 1, dtype=torch.float64)  # t equal slices of the segment
                rows.append(resample_tokens(temporal[b], edges[:-1], edges[1:], duration, hop))
            return rows
        sr, size, patch = self.preprocess.sample_rate, self.preprocess.audio_samples, self.net.patch
        tokens = self._run(max_inputs, batch["audio"])["tokens"]  # (R, n, D), time order within a window
        n_tok = tokens.shape[1]
        owner = batch["window_item"]
        lengths = batch["audio_lengths"]
        for b, duration in enumerate(durations):
            mine = torch.nonzero(owner == b).squeeze(1)  # this example's windows, in order
            k = len(mine)
            starts = (torch.arange(k)[:, None] * size + torch.arange(n_tok)[None] * patch).reshape(-1)  # samples
            real = starts < int(lengths[mine].sum())  # tokens that begin in real audio, not padding
            toks = tokens[mine.to(tokens.device)].reshape(k * n_tok, -1)[real.to(tokens.device)]
            s = starts[real].double()
            rows.append(resample_tokens(toks, s / sr, (s + patch) / sr, duration, hop))
        return rows

    # -- features ----------------------------------------------------------------------------------

    def clip_features(
        self,
        examples: Sequence[Example],
        pool: Pool = "agg",
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = True,
        max_fail_fraction: float = 0.01,
    ) -> ClipFeatures:
        """Clip features (K, D) of the examples that decoded, and their positions ``kept``.

        ``batch_size`` examples are decoded per step and at most ``batch_size`` clips, windows or texts
        go through the tower at once. More than ``max_fail_fraction`` undecodable examples raise
        :class:`data.collate.DataFailureError`.
        """
        loader = self._loader(examples, batch_size, num_workers)
        outs, kept = self._extract(
            loader, lambda b: list(self.forward_batch(b, pool, batch_size)), len(examples), progress, max_fail_fraction
        )
        features = torch.stack(outs) if outs else torch.zeros(0, self.dim)
        return ClipFeatures(features, kept)

    def frame_features(
        self,
        examples: Sequence[Example],
        hop: float,
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        progress: bool = True,
        max_fail_fraction: float = 0.01,
    ) -> FrameFeatures:
        """Timestamp features of the examples that decoded: (T_i, D) each, row k covering seconds
        ``[k * hop, (k + 1) * hop)`` from the example's start, ``T_i = ceil(duration / hop)``."""
        if hop <= 0:
            raise ValueError(f"hop must be positive, got {hop}")
        if self.modality == "text":
            raise ValueError("frame features need a video or audio tower; text has no time axis")
        loader = self._loader(examples, batch_size, num_workers)
        outs, kept = self._extract(
            loader, lambda b: self._frame_rows(b, hop, batch_size), len(examples), progress, max_fail_fraction
        )
        return FrameFeatures(outs, kept)

    def decode(self, examples: Sequence[Example], *, progress: bool = True) -> list[dict[str, Any] | ItemFailure]:
        """The eval-mode inputs of ``examples`` in memory (an :class:`ItemFailure` for a file that cannot be
        read), for :meth:`item_features`: towers that share an export's preprocessing (a pretrained tower and
        its random-init twins) then decode each file once."""
        dataset = self.dataset(list(examples), train=False)
        bar = tqdm(range(len(dataset)), desc=f"decode {self.modality}", unit="item", disable=not progress, leave=False)
        return [dataset[i] for i in bar]

    def item_features(
        self,
        items: Sequence[dict[str, Any] | ItemFailure],
        *,
        pool: Pool = "agg",
        hop: float | None = None,
        batch_size: int = 16,
        progress: bool = True,
        max_fail_fraction: float = 0.01,
    ) -> ClipFeatures | FrameFeatures:
        """:meth:`clip_features` (``hop`` None) or :meth:`frame_features` of inputs from :meth:`decode`."""
        if hop is not None and (hop <= 0 or self.modality == "text"):
            raise ValueError(f"frame features need a positive hop and a video or audio tower, got {hop}")

        def batches() -> Iterator[dict[str, Any]]:
            for s in range(0, len(items), batch_size):
                chunk = [
                    it if isinstance(it, ItemFailure) else it | {"index": s + i}
                    for i, it in enumerate(items[s : s + batch_size])
                ]
                yield collate_items(chunk)

        if hop is None:
            per_batch = lambda b: list(self.forward_batch(b, pool, batch_size))  # noqa: E731
        else:
            per_batch = lambda b: self._frame_rows(b, hop, batch_size)  # noqa: E731
        outs, kept = self._extract(batches(), per_batch, len(items), progress, max_fail_fraction)
        if hop is not None:
            return FrameFeatures(outs, kept)
        return ClipFeatures(torch.stack(outs) if outs else torch.zeros(0, self.dim), kept)

    def wave_features(self, waves: torch.Tensor, pool: Pool = "agg", *, batch_size: int = 16) -> torch.Tensor:
        """Clip features (n, D) of in-memory mono audio (n, S) at the export's sample rate, windowed,
        standardised and padded exactly like decoded audio examples."""
        outs, _ = self._extract(
            self._wave_batches(waves, batch_size), lambda b: list(self.forward_batch(b, pool, batch_size))
        )
        return torch.stack(outs) if outs else torch.zeros(0, self.dim)

    def wave_frame_features(self, waves: torch.Tensor, hop: float, *, batch_size: int = 16) -> list[torch.Tensor]:
        """Frame features (T, D) of each row of in-memory audio (n, S), as :meth:`frame_features`."""
        if hop <= 0:
            raise ValueError(f"hop must be positive, got {hop}")
        outs, _ = self._extract(self._wave_batches(waves, batch_size), lambda b: self._frame_rows(b, hop, batch_size))
        return outs

    def _loader(self, examples: Sequence[Example], batch_size: int, num_workers: int) -> DataLoader:
        dataset = self.dataset(list(examples), train=False)
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_items)

    def _wave_batches(self, waves: torch.Tensor, batch_size: int) -> Iterator[dict[str, Any]]:
        if self.modality != "audio":
            raise ValueError(f"in-memory audio needs the audio tower, this is the {self.modality} tower")
        if waves.ndim != 2:
            raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(waves.shape)}")
        if waves.shape[1] == 0:
            raise ValueError("audio has no samples")
        for s in range(0, waves.shape[0], batch_size):
            chunk = waves[s : s + batch_size].detach().float().clamp(-1.0, 1.0)
            items = [audio_item(w, self.preprocess) | {"index": s + i, "label": -1} for i, w in enumerate(chunk)]
            yield collate_items(items)

    def _extract(
        self,
        batches: Iterable[dict[str, Any]],
        per_batch: Callable[[dict[str, Any]], list[torch.Tensor]],
        total: int | None = None,
        progress: bool = False,
        max_fail_fraction: float = 1.0,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run ``per_batch`` over ``batches`` in eval mode without gradients; returns the outputs of the
        kept examples (float32, CPU) and their indices, after judging the failure budget."""
        tracker = FailureTracker(max_fail_fraction=max_fail_fraction, min_attempts=(total or 0) + 1)
        outs: list[torch.Tensor] = []
        kept: list[int] = []
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                bar = tqdm(batches, desc=f"{self.modality} features", unit="batch", disable=not progress, leave=False)
                for batch in bar:
                    tracker.update(batch, check=False)  # logs each bad file once; judged below
                    if len(batch["index"]) == 0:
                        continue
                    outs.extend(x.float().cpu() for x in per_batch(batch))
                    kept.extend(batch["index"].tolist())
        finally:
            self.train(was_training)
        self.last_failures = list(tracker.failed_paths.items())
        tracker.check(final=True)
        return outs, torch.tensor(kept, dtype=torch.int64)


def num_rows(duration: float, hop: float) -> int:
    """Rows of frame features for ``duration`` seconds: ``ceil(duration / hop)``, at least 1 (a partial
    last hop gets its row; a duration a hair over a whole number of hops, from float round-off, does not)."""
    return max(1, math.ceil(duration / hop - _ROW_TOLERANCE))


def resample_tokens(
    tokens: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, duration: float, hop: float
) -> torch.Tensor:
    """Tokens (n, D) spanning ``[starts, ends)`` seconds -> (num_rows(duration, hop), D), one row per hop.

    Row k is the mean of the tokens whose centre lies in ``[k * hop, (k + 1) * hop)`` (centres past the
    end go to the last row). A hop shorter than a token can hold no centre: its row is then the token
    nearest to the hop's centre, so every row describes the audio or frames at its time.
    """
    T = num_rows(duration, hop)
    centres = (starts.double() + ends.double()) / 2  # (n,)
    # A centre on a boundary belongs to the later hop, whatever the round-off of centre / hop.
    row = torch.floor(centres / hop + 1e-9).long().clamp(0, T - 1).to(tokens.device)
    sums = tokens.new_zeros(T, tokens.shape[1]).index_add_(0, row, tokens)
    counts = tokens.new_zeros(T).index_add_(0, row, tokens.new_ones(len(row)))
    empty = torch.nonzero(counts == 0).squeeze(1)
    if len(empty):
        mid = ((empty.cpu().double() + 0.5) * hop).clamp(max=duration)  # (E,)
        nearest = (centres[None, :] - mid[:, None]).abs().argmin(dim=1).to(tokens.device)
        sums[empty] = tokens[nearest]
        counts[empty] = 1
    return sums / counts[:, None]


# -- decoding ---------------------------------------------------------------------------------------


class _UnusableText(ValueError):
    """A text example without tokens."""


class TowerDataset(Dataset):
    """Item i: example i decoded for one tower, or an :class:`ItemFailure` when its file cannot be read.

    Items are dicts with ``index``, ``label``, ``id``, ``duration`` (seconds of the example) and:
    video ``video`` (T, C, H, W) in [-1, 1]; audio ``audio`` (k, S) windows and ``audio_lengths`` (k,)
    real samples in each; text ``text_ids`` (L,) and ``text_length``. ``train=True`` uses the export's
    training augmentation: a random crop, flip and colour jitter of the same uniformly spread frames, or
    one random window of the audio with random gain and noise.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        modality: Modality,
        preprocess: PreprocessConfig,
        tokenizer: Tokenizer | None = None,
        train: bool = False,
    ) -> None:
        self.examples = list(examples)
        self.modality = modality
        self.cfg = preprocess
        self.tokenizer = tokenizer
        self.train = train
        if modality == "text" and tokenizer is None:
            raise ValueError("text examples need a tokenizer")
        self.video_transform = VideoTransform(preprocess, train) if modality == "video" else None
        # Standardisation is applied by audio_item, over real samples only.
        augment = dataclasses.replace(preprocess, audio_standardize=False)
        self.audio_augment = AudioTransform(augment, train=True) if modality == "audio" and train else None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any] | ItemFailure:
        ex = self.examples[index]
        try:
            if self.modality == "video":
                item = self._video(ex)
            elif self.modality == "audio":
                item = self._audio(ex)
            else:
                item = self._text(ex)
        except (MediaError, _UnusableText) as exc:
            return ItemFailure(str(ex.path if ex.path is not None else ex.text), str(exc), index)
        where = ex.path if ex.path is not None else "text"
        return item | {"index": index, "label": ex.label, "id": f"{where}@{ex.start or 0.0:.3f}"}

    def _video(self, ex: Example) -> dict[str, Any]:
        if ex.path is None:
            raise MediaError("a video example needs a path")
        cfg = self.cfg
        start = ex.start or 0.0
        # Scaled while decoding, unless a region in source pixels is cut first (as ManifestDataset does).
        size = None if cfg.region is not None else cfg.resize_size
        with MediaReader(ex.path) as reader:
            end = ex.end if ex.end is not None else reader.video_seconds()
            duration = end - start
            if duration <= 0:
                raise MediaError(f"empty segment [{start:.3f}, {end:.3f}] s: {ex.path}")
            step = duration / cfg.num_frames
            if step <= _SPARSE_GAP:
                frames = reader.read_video(start + step / 2, cfg.num_frames, 1.0 / step, size)  # (T, C, H, W)
        if step > _SPARSE_GAP:  # one reader per frame: a reader decodes one clip
            frames = torch.cat([_read_frame(ex.path, start + (k + 0.5) * step, size) for k in range(cfg.num_frames)])
        return {"video": self.video_transform(frames), "duration": duration}

    def _audio(self, ex: Example) -> dict[str, Any]:
        if ex.path is None:
            raise MediaError("an audio example needs a path")
        wave = load_segment(ex.path, ex.start, ex.end, self.cfg.sample_rate)
        duration = wave.shape[0] / self.cfg.sample_rate
        if not self.train:
            return audio_item(wave, self.cfg)
        size = self.cfg.audio_samples
        if wave.shape[0] > size:
            offset = int(torch.randint(0, wave.shape[0] - size + 1, ()))
            wave = wave[offset : offset + size]
        return audio_item(self.audio_augment(wave), self.cfg) | {"duration": duration}

    def _text(self, ex: Example) -> dict[str, Any]:
        if not ex.text or not ex.text.strip():
            raise _UnusableText("a text example needs text")
        ids, lengths = self.tokenizer.encode_batch([ex.text], self.cfg.max_text_len)  # (1, L), (1,)
        if int(lengths[0]) == 0:
            raise _UnusableText(f"text {ex.text!r} has no tokens")
        return {"text_ids": ids[0], "text_length": int(lengths[0]), "duration": 0.0}


def _read_frame(path: Path, t: float, size: int | None) -> torch.Tensor:
    """The frame on screen at ``t`` seconds, uint8 (1, C, H, W)."""
    with MediaReader(path) as reader:
        return reader.read_video(t, 1, 1.0, size)


def load_segment(path: str | Path, start: float | None, end: float | None, sample_rate: int) -> torch.Tensor:
    """Mono audio (S,) of ``[start, end]`` seconds of any media file at ``sample_rate``, clipped to [-1, 1]
    as training clips are. Decoded from the file's start (audio-only files cannot seek through
    :class:`MediaReader`); only up to ``end`` is decoded."""
    start = start or 0.0
    if end is not None and end <= start:
        raise MediaError(f"empty segment [{start:.3f}, {end:.3f}] s: {path}")
    wave = load_audio(path, sample_rate, max_seconds=end)
    wave = wave[round(start * sample_rate) : None if end is None else round(end * sample_rate)]
    if wave.shape[0] == 0:
        raise MediaError(f"no audio in [{start:.3f}, {end if end is not None else 'end'}] s: {path}")
    return wave.clamp(-1.0, 1.0)


def audio_item(wave: torch.Tensor, cfg: PreprocessConfig) -> dict[str, Any]:
    """Audio (S,) -> consecutive windows ``audio`` (k, W) of the pretraining clip's W samples, k = ceil(S / W),
    with ``audio_lengths`` (k,) real samples per window and ``duration`` S / sample_rate.

    With ``audio_standardize`` each window is standardised over its real samples, as a training clip is.
    The last window is then zero-padded rather than filled by repeating the audio: zeros are what
    pretraining put after a file's end (``data.media`` pads clips that run past it, and retrieval pads
    short files the same way), and a repeat would invent events (a keyword said three times, onsets where
    there are none) that frame features would report and the AGG token would attend to.
    """
    size = cfg.audio_samples
    S = wave.shape[0]
    k = max(1, math.ceil(S / size))
    windows = wave.new_zeros(k, size)
    lengths = torch.zeros(k, dtype=torch.int64)
    for i in range(k):
        part = wave[i * size : (i + 1) * size]
        if cfg.audio_standardize:
            part = standardize_audio(part)
        windows[i, : part.shape[0]] = part
        lengths[i] = part.shape[0]
    return {"audio": windows, "audio_lengths": lengths, "duration": S / cfg.sample_rate}


def collate_items(items: Sequence[dict[str, Any] | ItemFailure]) -> dict[str, Any]:
    """Stack :class:`TowerDataset` items; failed ones are listed in ``failures`` as (path, reason).

    Keys: ``index`` (B,) positions in the dataset, ``label`` (B,), ``duration`` (B,) float64, ``ids``,
    ``failures``; video ``video`` (B, T, C, H, W); audio ``audio`` (R, W) the windows of all B examples in
    order, ``audio_lengths`` (R,) and ``window_item`` (R,) the row of each window's example; text
    ``text_ids`` (B, L) cut to the longest text and ``text_lengths`` (B,). With every item failed, B = 0.
    """
    good = [x for x in items if not isinstance(x, ItemFailure)]
    batch: dict[str, Any] = {
        "index": torch.tensor([x["index"] for x in good], dtype=torch.int64),
        "label": torch.tensor([x["label"] for x in good], dtype=torch.int64),
        "duration": torch.tensor([x["duration"] for x in good], dtype=torch.float64),
        "ids": [x.get("id", str(x["index"])) for x in good],
        "failures": [(x.path, x.reason) for x in items if isinstance(x, ItemFailure)],
    }
    if not good:
        return batch
    if "video" in good[0]:
        batch["video"] = torch.stack([x["video"] for x in good])  # (B, T, C, H, W)
    elif "audio" in good[0]:
        batch["audio"] = torch.cat([x["audio"] for x in good])  # (R, W)
        batch["audio_lengths"] = torch.cat([x["audio_lengths"] for x in good])  # (R,)
        batch["window_item"] = torch.cat(
            [torch.full((x["audio"].shape[0],), b, dtype=torch.int64) for b, x in enumerate(good)]
        )
    else:
        lengths = torch.tensor([x["text_length"] for x in good], dtype=torch.int64)
        longest = int(lengths.max())
        batch["text_ids"] = torch.stack([x["text_ids"][:longest] for x in good])  # (B, L)
        batch["text_lengths"] = lengths
    return batch
