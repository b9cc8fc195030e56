"""Zero-shot retrieval evaluation of a VATT model on a manifest, and the index the query tool serves.

    python -m eval.retrieval --export RUN/export --manifest VAL.jsonl --index DIR

embeds the manifest (:mod:`eval.embed`: 4 uniformly spaced clips per video, averaged), prints
text->video, video->text, video->audio and audio->video R@1/5/10, median and mean rank
(:mod:`eval.metrics`; exact, over the whole gallery, ties counted against the query) and, with
``--index``, saves a FAISS index directory (:mod:`eval.index`) for ``python -m eval.search``.
Pretraining calls :func:`evaluate_retrieval` for its periodic evaluation.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from data.cli import setup_logging
from data.collate import DataFailureError
from data.files import OutputPathError, atomic_write_json, check_output_path
from data.manifest import ManifestEntry, ManifestError
from data.media import MediaError
from data.tokenizer import Tokenizer
from data.transforms import PreprocessConfig
from eval.embed import ManifestEmbeddings, embed_manifest
from eval.index import MAX_EF_SEARCH, IndexBuildError, RetrievalIndex
from eval.metrics import format_table, mean_pairwise_cosine, paired_metrics, text_video_metrics
from eval.vatt_export import export_fingerprint, load_vatt_export
from train.export import ExportError

__all__ = ["build_index", "evaluate_retrieval", "format_table", "main", "metrics_from_embeddings"]

logger = logging.getLogger(__name__)


def metrics_from_embeddings(emb: ManifestEmbeddings) -> dict[str, dict[str, float]]:
    """``t2v``/``v2t`` over the captions and ``v2a``/``a2v`` over the videos with audio (whichever exist),
    and ``cosine``: the mean pairwise cosine of the video, audio and caption embeddings in each space, which
    tells a spread-out space (near 0) from a collapsed one (near 1)."""
    results: dict[str, dict[str, float]] = {}
    if len(emb.captions):
        results.update(text_video_metrics(emb.text_vt, emb.video_vt, emb.caption_video))
    else:
        logger.warning("the manifest has no captions: no text<->video metrics")
    with_audio = torch.nonzero(emb.has_audio).squeeze(1)
    if len(with_audio):
        results["v2a"] = paired_metrics(emb.video_va[with_audio], emb.audio_va[with_audio])
        results["a2v"] = paired_metrics(emb.audio_va[with_audio], emb.video_va[with_audio])
    else:
        logger.warning("no video of the manifest has audio: no video<->audio metrics")
    spaces = {
        "video_va": emb.video_va, "video_vt": emb.video_vt, "audio_va": emb.audio_va[with_audio], "text_vt": emb.text_vt
    }  # fmt: skip
    results["cosine"] = {k: mean_pairwise_cosine(v) for k, v in spaces.items() if len(v) >= 2}
    return results


def build_index(
    emb: ManifestEmbeddings,
    *,
    fingerprint: str | None,
    preprocess: Mapping[str, Any],
    export: str | Path | None = None,
    factory: str = "Flat",
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> RetrievalIndex:
    """A gallery index with ``video_vt`` (text and video queries) and ``video_va`` (audio queries) spaces."""
    items = [
        {
            "id": e.id,
            "media": str(e.media),
            "start": e.start,
            "end": e.end,
            "captions": [c.text for c in e.captions],
        }
        for e in emb.entries
    ]
    return RetrievalIndex.build(
        {"video_vt": emb.video_vt, "video_va": emb.video_va},
        items,
        fingerprint=fingerprint,
        preprocess=preprocess,
        export=export,
        factory=factory,
        nprobe=nprobe,
        ef_search=ef_search,
    )


def evaluate_retrieval(
    model: torch.nn.Module,
    preprocess: PreprocessConfig | Mapping[str, Any],
    tokenizer: Tokenizer | None,
    manifest: str | Path | Sequence[ManifestEntry],
    *,
    clips_per_video: int = 4,
    batch_size: int = 32,
    num_workers: int = 0,
    index_dir: str | Path | None = None,
    fingerprint: str | None = None,
    export_dir: str | Path | None = None,
    index_factory: str = "Flat",
    nprobe: int | None = None,
    ef_search: int | None = None,
    device: str | torch.device = "cpu",
    max_fail_fraction: float = 0.01,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Exact retrieval metrics ``{"t2v", "v2t", "v2a", "a2v"}`` and ``cosine`` of ``model`` on ``manifest``.

    With ``index_dir`` the gallery is also saved as an index directory; it records ``fingerprint`` (read
    from ``export_dir`` when not given) so that only queries embedded by the same export are accepted.
    ``index_dir`` is checked before the embedding: a folder this project did not write is refused
    (:class:`data.files.OutputPathError`). The model is put in eval mode and given back in the mode it came in.
    """
    if index_dir is not None:
        check_output_path(index_dir, "dir")
    pp = preprocess if isinstance(preprocess, PreprocessConfig) else PreprocessConfig.from_dict(dict(preprocess))
    if index_dir is not None and fingerprint is None:
        if export_dir is None:
            raise ValueError("index_dir needs export_dir or fingerprint: the index records which model made it")
        fingerprint = export_fingerprint(export_dir)
    was_training = model.training
    model.eval()
    try:
        emb = embed_manifest(
            model,
            pp,
            tokenizer,
            manifest,
            clips_per_video=clips_per_video,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            max_fail_fraction=max_fail_fraction,
            progress=progress,
        )
    finally:
        model.train(was_training)
    results = metrics_from_embeddings(emb)
    if index_dir is not None:
        index = build_index(
            emb,
            fingerprint=fingerprint,
            preprocess=pp.to_dict(),
            export=export_dir,
            factory=index_factory,
            nprobe=nprobe,
            ef_search=ef_search,
        )
        index.meta["extra"]["metrics"] = results
        index.save(index_dir)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.retrieval", description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, help="a VATT export directory (RUN/export)")
    p.add_argument("--manifest", required=True, help="JSONL manifest of the videos and captions to evaluate on")
    p.add_argument("--index", default=None, help="also save a FAISS index directory here for eval.search")
    p.add_argument("--factory", default="Flat", help="FAISS factory string: Flat (exact), IVF1024,Flat, HNSW32, ...")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (>= 1)")
    p.add_argument("--ef-search", type=int, default=None, help=f"HNSW search breadth (1..{MAX_EF_SEARCH})")
    p.add_argument("--clips-per-video", type=int, default=4, help="clips averaged per video (>= 1)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass (>= 1)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (>= 0)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-fail-fraction", type=float, default=0.01, help="tolerated share of undecodable clips, in [0, 1]"
    )
    p.add_argument("--json", default=None, help="also write the metrics as JSON to this file")
    args = p.parse_args(argv)
    setup_logging()
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which SIMD build loaded is noise here
    try:
        _check_args(args)
        exp = load_vatt_export(args.export, device=args.device)
        results = evaluate_retrieval(
            exp.model,
            exp.preprocess,
            exp.tokenizer,
            args.manifest,
            clips_per_video=args.clips_per_video,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            index_dir=args.index,
            fingerprint=exp.fingerprint,
            export_dir=args.export,
            index_factory=args.factory,
            nprobe=args.nprobe,
            ef_search=args.ef_search,
            device=args.device,
            max_fail_fraction=args.max_fail_fraction,
        )
        print(format_table(results))
        if args.index:
            print(f"index: {args.index}")
        if args.json:
            atomic_write_json(args.json, results)
            logger.info("wrote %s", args.json)
    except (ExportError, ManifestError, MediaError, IndexBuildError, DataFailureError, ValueError, OSError) as exc:
        text = str(exc).strip()
        sys.exit(f"eval.retrieval: {text.splitlines()[0] if text else type(exc).__name__}")


def _check_args(args: argparse.Namespace) -> None:
    """Every argument before any work, each failure naming its flag (ValueError, one line)."""
    for flag, value, low in (
        ("--clips-per-video", args.clips_per_video, 1),
        ("--batch-size", args.batch_size, 1),
        ("--num-workers", args.num_workers, 0),
        ("--nprobe", args.nprobe, 1),
        ("--ef-search", args.ef_search, 1),
    ):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.ef_search is not None and args.ef_search > MAX_EF_SEARCH:
        raise ValueError(f"--ef-search must be <= {MAX_EF_SEARCH}, got {args.ef_search}")
    if not 0.0 <= args.max_fail_fraction <= 1.0:  # also refuses nan
        raise ValueError(f"--max-fail-fraction must be in [0, 1], got {args.max_fail_fraction}")
    if not Path(args.export).is_dir():
        raise ExportError(f"--export: export directory {args.export!r} not found")
    if not Path(args.manifest).is_file():
        raise ManifestError(f"--manifest: manifest file {args.manifest!r} not found")
    for flag, out, kind in (("--index", args.index, "dir"), ("--json", args.json, "file")):
        if out is not None:
            try:
                check_output_path(out, kind)
            except OutputPathError as exc:
                raise OutputPathError(f"{flag}: {exc}") from None


if __name__ == "__main__":
    main()
