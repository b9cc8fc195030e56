"""Ask an index for videos in words, by an example video, or by a sound.

    python -m eval.search --index DIR "a red circle moves left" -k 5
    python -m eval.search --index DIR --video clip.mp4 --sheet hits.png
    python -m eval.search --index DIR --audio sound.wav

prints rank, score (cosine similarity) and media path of the top ``k`` videos, and with ``--sheet``
writes a contact sheet of them. Text and video queries search the video-text space, audio queries the
video-audio space. The model is the export that built the index (its path is in the index's
``meta.json``) unless ``--export`` names another copy; an export with a different fingerprint is
refused, since its embeddings would not be comparable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from data.cli import setup_logging
from data.files import OutputPathError, check_output_path
from data.media import MediaError
from eval.embed import embed_audio_file, embed_texts, embed_video_file
from eval.index import Hit, RetrievalIndex
from eval.sheet import contact_sheet
from eval.vatt_export import VattExport, load_vatt_export

logger = logging.getLogger(__name__)


class QueryError(ValueError):
    """A query that cannot be run (no query given, no export known, no tokenizer, ...)."""


def embed_query(
    exp: VattExport,
    *,
    text: str | None = None,
    video: str | Path | None = None,
    audio: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, str]:
    """The (1, D) query embedding and the index space it searches (``video_vt`` or ``video_va``)."""
    _check_query(text, video, audio)
    if text is not None:
        if exp.tokenizer is None:
            raise QueryError(f"export {exp.path} has no tokenizer, so it cannot embed text")
        q = embed_texts(exp.model, exp.tokenizer, [text], exp.preprocess.max_text_len, device=device, progress=False)
        return q, "video_vt"
    if video is not None:
        return embed_video_file(exp.model, video, exp.preprocess, device=device).video_vt, "video_vt"
    return embed_audio_file(exp.model, audio, exp.preprocess, device=device), "video_va"


def _check_query(text: str | None, video: str | Path | None, audio: str | Path | None) -> None:
    if sum(x is not None for x in (text, video, audio)) != 1:
        raise QueryError("give exactly one query: a text, --video FILE or --audio FILE")
    for flag, file in (("--video", video), ("--audio", audio)):
        if file is not None and not Path(file).is_file():
            raise QueryError(f"{flag}: file {str(file)!r} not found")


def search(
    index: str | Path | RetrievalIndex,
    *,
    text: str | None = None,
    video: str | Path | None = None,
    audio: str | Path | None = None,
    k: int = 5,
    export: str | Path | VattExport | None = None,
    device: str | torch.device = "cpu",
) -> list[Hit]:
    """Top-``k`` gallery videos for one query; the export defaults to the one recorded in the index."""
    _check_query(text, video, audio)  # before loading anything
    if k < 1:
        raise QueryError(f"k must be >= 1, got {k}")
    index = index if isinstance(index, RetrievalIndex) else RetrievalIndex.load(index)
    if export is None:
        export = index.meta.get("export")
        if export is None:
            raise QueryError("the index does not record its export; pass --export")
    exp = export if isinstance(export, VattExport) else load_vatt_export(export, device=device)
    index.check_fingerprint(exp.fingerprint)  # before spending time on the query
    query, space = embed_query(exp, text=text, video=video, audio=audio, device=device)
    return index.search(query, k, fingerprint=exp.fingerprint, space=space)[0]


def format_hits(hits: list[Hit]) -> str:
    lines = [f"{'rank':>4}  {'score':>7}  media"]
    lines += [f"{h.rank:>4}  {h.score:>7.4f}  {h.media or h.id}" for h in hits]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m eval.search", description=__doc__.splitlines()[0])
    p.add_argument("query", nargs="?", default=None, help="text to search for")
    p.add_argument("--index", required=True, help="index directory written by eval.retrieval --index")
    p.add_argument("-k", type=int, default=5, help="number of results (>= 1)")
    p.add_argument("--video", default=None, help="query by an example video file")
    p.add_argument("--audio", default=None, help="query by the sound of an audio or video file")
    p.add_argument("--export", default=None, help="the export that built the index (default: recorded in it)")
    p.add_argument("--sheet", default=None, help="also write a contact sheet PNG of the hits here")
    p.add_argument("--frames", type=int, default=4, help="frames per hit on the contact sheet (>= 1)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)
    try:
        # Arguments first, each failure naming its flag, so that nothing is loaded for a command that must fail.
        for flag, value in (("-k", args.k), ("--frames", args.frames)):
            if value < 1:
                raise QueryError(f"{flag} must be >= 1, got {value}")
        if not Path(args.index).is_dir():
            raise QueryError(f"--index: index directory {args.index!r} not found")
        if args.export is not None and not Path(args.export).is_dir():
            raise QueryError(f"--export: export directory {args.export!r} not found")
        _check_query(args.query, args.video, args.audio)
        if args.sheet:
            try:
                check_output_path(args.sheet)
            except OutputPathError as exc:
                raise OutputPathError(f"--sheet: {exc}") from None
        hits = search(
            args.index,
            text=args.query,
            video=args.video,
            audio=args.audio,
            k=args.k,
            export=args.export,
            device=args.device,
        )
        print(format_hits(hits))
        if args.sheet:
            title = args.query if args.query is not None else f"like {Path(args.video or args.audio).name}"
            print(f"contact sheet: {contact_sheet(hits, args.sheet, title=title, frames_per_hit=args.frames)}")
    except (ValueError, MediaError, OSError) as exc:  # QueryError, IndexDirError, ExportError, OutputPathError, ...
        sys.exit(f"eval.search: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    main()
