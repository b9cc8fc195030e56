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

from data.media import MediaError
from data.rundir import setup_logging
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
    given = [x is not None for x in (text, video, audio)]
    if sum(given) != 1:
        raise QueryError("give exactly one query: a text, --video FILE or --audio FILE")
    if text is not None:
        if exp.tokenizer is None:
            raise QueryError(f"export {exp.path} has no tokenizer, so it cannot embed text")
        q = embed_texts(exp.model, exp.tokenizer, [text], exp.preprocess.max_text_len, device=device, progress=False)
        return q, "video_vt"
    if video is not None:
        return embed_video_file(exp.model, video, exp.preprocess, device=device).video_vt, "video_vt"
    return embed_audio_file(exp.model, audio, exp.preprocess, device=device), "video_va"


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
    p.add_argument("-k", type=int, default=5, help="number of results")
    p.add_argument("--video", default=None, help="query by an example video file")
    p.add_argument("--audio", default=None, help="query by the sound of an audio or video file")
    p.add_argument("--export", default=None, help="the export that built the index (default: recorded in it)")
    p.add_argument("--sheet", default=None, help="also write a contact sheet PNG of the hits here")
    p.add_argument("--frames", type=int, default=4, help="frames per hit on the contact sheet")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    setup_logging(logging.WARNING)
    try:
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
    except (ValueError, MediaError, OSError) as exc:  # QueryError, IndexDirError, ExportError, ... are ValueErrors
        sys.exit(f"eval.search: {exc}")


if __name__ == "__main__":
    main()
