"""Trained models from Python: embed with a VATT export, query an index, transcribe with an AVSR export.

    from eval.api import load_avsr, load_index, load_vatt

    vatt = load_vatt("runs/demo/export")
    texts = vatt.embed_texts(["a red circle", "a blue square"])   # (2, D), L2-normalised
    hits = load_index("runs/demo/index").search_text("a red circle", k=5)
    text = load_avsr("runs/avsr/export").transcribe("clip.mp4", modality="av")

A thin layer over what the command-line tools run, so that a script gets the same numbers:
:mod:`eval.vatt_export` and :mod:`eval.embed` (embeddings), :mod:`eval.index` and :mod:`eval.search`
(queries), :mod:`eval.lrs2` (decoding) and :class:`data.lrs2.LRS2Dataset` (how an utterance is read).
No model code lives here. Failures raise one-line errors: :class:`ExportError` (export directory),
:class:`IndexDirError` (index directory), :class:`MediaError` (a media file), :class:`QueryError` (a
query that cannot run). Nothing here imports Accelerate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

import avsr as avsr_lib
from data.lrs2 import LRS2Config, LRS2Dataset, MouthTransform, SplitEntry, collate_lrs2
from data.media import MediaError
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig
from eval.embed import embed_audio_file, embed_texts, embed_video_file
from eval.faiss_file import IndexDirError
from eval.index import Hit, RetrievalIndex
from eval.lrs2 import DecodeConfig, load_avsr_export, lrs2_config, transcribe
from eval.search import QueryError, search
from eval.vatt_export import VattExport, load_vatt_export
from train.export import Export, ExportError

__all__ = [
    "Avsr",
    "DecodeConfig",
    "ExportError",
    "Hit",
    "Index",
    "IndexDirError",
    "MediaError",
    "QueryError",
    "Vatt",
    "load_avsr",
    "load_index",
    "load_vatt",
]

PathLike = str | Path


def _paths(files: PathLike | Sequence[PathLike]) -> list[PathLike]:
    return [files] if isinstance(files, (str, Path)) else list(files)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Vatt:
    """A VATT export ready to embed. Every embedding is L2-normalised, so ``a @ b.T`` is cosine similarity.

    Video and text meet in the video-text space (``D_vt``); video and audio in the video-audio space
    (``D_va``). A file is embedded as the mean of ``clips`` uniformly spaced clips (VATT's zero-shot
    protocol), with the preprocessing the export was trained with.
    """

    def __init__(self, export: VattExport, device: str | torch.device = "cpu") -> None:
        self.export = export
        self.device = torch.device(device)

    @property
    def model(self) -> torch.nn.Module:
        return self.export.model

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.export.preprocess

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.export.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.export.fingerprint

    def embed_texts(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(N, D_vt) for N texts (a single string counts as one)."""
        if self.tokenizer is None:
            raise QueryError(f"export {str(self.export.path)!r} has no tokenizer, so it cannot embed text")
        texts = [texts] if isinstance(texts, str) else list(texts)
        return embed_texts(
            self.model, self.tokenizer, texts, self.preprocess.max_text_len, device=self.device, progress=False
        )

    def embed_video(
        self, files: PathLike | Sequence[PathLike], space: Literal["vt", "va"] = "vt", clips: int = 4
    ) -> torch.Tensor:
        """(N, D) for N video files: ``space="vt"`` to compare with texts, ``"va"`` with sounds."""
        if space not in ("vt", "va"):
            raise QueryError(f"space must be 'vt' (video-text) or 'va' (video-audio), got {space!r}")
        rows = []
        for file in _paths(files):
            if not Path(file).is_file():
                raise MediaError(f"file not found: {file}")
            emb = embed_video_file(self.model, file, self.preprocess, clips_per_video=clips, device=self.device)
            rows.append(emb.video_vt if space == "vt" else emb.video_va)
        return torch.cat(rows) if rows else torch.zeros(0, 0)

    def embed_audio(self, files: PathLike | Sequence[PathLike], clips: int = 4) -> torch.Tensor:
        """(N, D_va) for N audio or video files (the sound track; its first 60 s)."""
        rows = []
        for file in _paths(files):
            if not Path(file).is_file():
                raise MediaError(f"file not found: {file}")
            rows.append(embed_audio_file(self.model, file, self.preprocess, clips_per_video=clips, device=self.device))
        return torch.cat(rows) if rows else torch.zeros(0, 0)


def load_vatt(path: PathLike, device: str | torch.device = "cpu") -> Vatt:
    """The VATT export written by ``pretrain.py`` into ``RUN/export``; raises ExportError with one line."""
    return Vatt(load_vatt_export(path, device=device), device)


class Index:
    """A retrieval index (``RUN/index``, written by pretraining or ``eval.retrieval --index``) and the
    export whose embeddings it holds, loaded at the first query. Results are :class:`eval.index.Hit`:
    ``rank`` (1-based), ``score`` (cosine), ``id``, ``media`` and the gallery ``item``."""

    def __init__(self, index: RetrievalIndex, vatt: Vatt | None = None, device: str | torch.device = "cpu") -> None:
        self.index = index
        self.device = torch.device(device)
        self._vatt = vatt

    def __len__(self) -> int:
        return len(self.index)

    @property
    def vatt(self) -> Vatt:
        """The export that built the index (its path is recorded in the index's meta.json)."""
        if self._vatt is None:
            path = self.index.meta.get("export")
            if path is None:
                raise QueryError("the index does not record its export; pass vatt= to load_index")
            self._vatt = load_vatt(path, self.device)
        return self._vatt

    def search_text(self, text: str, k: int = 5) -> list[Hit]:
        """The ``k`` videos nearest to a text."""
        return self._search(k, text=text)

    def search_video(self, file: PathLike, k: int = 5) -> list[Hit]:
        """The ``k`` videos nearest to an example video (video-text space)."""
        return self._search(k, video=file)

    def search_audio(self, file: PathLike, k: int = 5) -> list[Hit]:
        """The ``k`` videos whose pictures are nearest to a sound (video-audio space)."""
        return self._search(k, audio=file)

    def _search(self, k: int, **query: Any) -> list[Hit]:
        return search(self.index, k=k, export=self.vatt.export, device=self.device, **query)


def load_index(path: PathLike, vatt: Vatt | PathLike | None = None, device: str | torch.device = "cpu") -> Index:
    """An index directory; ``vatt`` (a :class:`Vatt` or an export path) when the export has moved since the
    index was built. A query from an export with another fingerprint is refused. Raises IndexDirError."""
    index = RetrievalIndex.load(path)
    if vatt is not None and not isinstance(vatt, Vatt):
        vatt = load_vatt(vatt, device)
    if vatt is not None:
        index.check_fingerprint(vatt.fingerprint)
    return Index(index, vatt, device)


class _OneUtterance(LRS2Dataset):
    """One media file read exactly as :class:`LRS2Dataset` reads an evaluation utterance (central crop, no
    noise), without a split list or a transcript; ``landmarks`` is its (T, K, 2) ``.npy`` file, if any."""

    def __init__(self, cfg: LRS2Config, file: Path, modality: str, landmarks: Path | None) -> None:
        # LRS2Dataset.__init__ reads a split list; everything else it sets is set here the same way.
        self.cfg = cfg
        self.split = "test"
        self.train = False
        self.entries = [SplitEntry(f"{file.parent.name}/{file.stem}")]  # <programme>/<clip>, as LRS2 names it
        self.audio_transform = None
        self.load_video = "v" in modality
        self.load_audio = "a" in modality
        self.video_transform = MouthTransform(cfg, train=False)
        self.file = file
        self.landmarks = landmarks

    def media_path(self, index: int) -> Path:
        return self.file

    def text(self, index: int) -> str:
        return ""  # no reference

    def lengths(self) -> list[int]:
        return [1]

    def _landmarks(self, clip_id: str) -> np.ndarray | None:
        return None if self.landmarks is None else np.load(self.landmarks)


class Avsr:
    """An AVSR export ready to transcribe: ``model`` (eval mode), ``tokens`` (output units), ``export``,
    ``preprocess`` (mouth box, crop, sample rate, normalisation: as in training) and ``modalities``."""

    def __init__(
        self, model: avsr_lib.AvsrModel, tokens: avsr_lib.TokenSet, export: Export, device: str | torch.device = "cpu"
    ):
        self.model = model
        self.tokens = tokens
        self.export = export
        self.device = torch.device(device)
        self.preprocess: LRS2Config = lrs2_config("", export.preprocess)

    @property
    def modalities(self) -> str:
        return self.model.cfg.modalities

    def transcribe(
        self,
        file: PathLike,
        modality: str | None = None,
        decode: DecodeConfig | None = None,
        landmarks: PathLike | None = None,
    ) -> str:
        """The transcript of one utterance.

        ``file``: an mp4 of face-tracked frames as LRS2 distributes them (the mouth is the export's fixed
        box of each frame, or follows ``landmarks``, a ``.npy`` of (T, K, 2) points; 68 points are read
        as the iBUG layout) with its sound track; audio-only decoding still reads the video's length.
        ``modality``: ``"a"``, ``"v"`` or ``"av"`` (default: every stream of the model). ``decode``: the
        joint CTC/attention beam search (default: beam 10, CTC weight 0.1) or ``DecodeConfig("greedy")``.
        """
        modality = modality or self.modalities
        if modality not in ("a", "v", "av") or not set(modality) <= set(self.modalities):
            raise QueryError(f"modality {modality!r} is not available: the model takes {self.modalities!r}")
        file = Path(file)
        if not file.is_file():
            raise MediaError(f"file not found: {file}")
        if landmarks is not None and not Path(landmarks).is_file():
            raise MediaError(f"landmarks file not found: {landmarks}")
        dataset = _OneUtterance(self.preprocess, file, modality, Path(landmarks) if landmarks else None)
        loader = DataLoader(dataset, batch_size=1, collate_fn=collate_lrs2)
        records, _ = transcribe(
            self.model, self.tokens, loader, modality, decode or DecodeConfig(), self.device, progress=False
        )
        if "failed" in records[0]:
            raise MediaError(records[0]["failed"])
        return records[0]["hyp"]


def load_avsr(path: PathLike, device: str | torch.device = "cpu") -> Avsr:
    """The AVSR export written by ``train_avsr.py`` into ``RUN/export``; raises ExportError with one line."""
    try:
        model, tokens, export = load_avsr_export(path, device)
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # unknown model, weights that do not fit
        raise ExportError(f"export {str(path)!r} cannot be loaded: {_first_line(exc)}") from None
    return Avsr(model, tokens, export, device)
