"""An LRS2 directory (or the synthetic speech corpus, which shares its layout) as a pretraining manifest.

``python -m data.lrs2_manifest --root DIR --splits pretrain --out FILE.jsonl`` writes one manifest line
per clip of the listed splits, so ``pretrain.py`` can train VATT towers on talking faces and their voices
(``data.train_manifests=[FILE.jsonl]``). Captions come from the transcripts: a pretrain transcript's word
timings become timed captions of ``--words`` consecutive words each, so MIL-NCE's positives are the words
spoken around the sampled clip; a main transcript (no timings) gives one caption, the whole utterance.
Clips whose media file is missing are left out and counted; media paths are relative to the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from data.cli import setup_logging
from data.files import atomic_write_text
from data.lrs2 import SPLITS, Transcript, clip_path, read_split, read_transcript

logger = logging.getLogger(__name__)


def transcript_captions(transcript: Transcript, words_per_caption: int) -> list[Any]:
    """Timed captions of ``words_per_caption`` words from word timings, else the untimed utterance."""
    if words_per_caption < 1:
        raise ValueError(f"words_per_caption must be >= 1, got {words_per_caption}")
    if not transcript.words:
        return [transcript.text] if transcript.text else []
    out: list[Any] = []
    for i in range(0, len(transcript.words), words_per_caption):
        group = transcript.words[i : i + words_per_caption]
        text = " ".join(w.word for w in group)
        out.append({"text": text, "start": group[0].start, "end": group[-1].end})
    return out


def manifest_lines(
    root: str | Path, splits: list[str], out: str | Path, words_per_caption: int = 2
) -> tuple[list[str], int]:
    """The JSONL lines for ``splits`` of ``root`` (paths relative to ``out``'s folder) and the number of
    clips left out because their media file is missing."""
    base = Path(out).resolve().parent
    lines, missing = [], 0
    for split in splits:
        for entry in read_split(root, split):
            media = clip_path(root, split, entry.id)
            if not media.is_file():
                missing += 1
                logger.warning("%s: no media file for clip %s of split %s; left out", media, entry.id, split)
                continue
            captions = transcript_captions(read_transcript(media.with_suffix(".txt")), words_per_caption)
            record = {
                "media": os.path.relpath(media.resolve(), base),
                "id": f"{split}/{entry.id}",
                "captions": captions,
            }
            lines.append(json.dumps(record, ensure_ascii=False))
    return lines, missing


def write_manifest(root: str | Path, splits: list[str], out: str | Path, words_per_caption: int = 2) -> int:
    """Write the manifest atomically; returns the number of clips written. No clip at all is an error."""
    lines, missing = manifest_lines(root, splits, out, words_per_caption)
    if not lines:
        raise ValueError(f"splits {splits} of {root} hold no clip with a media file ({missing} missing)")
    atomic_write_text(out, "".join(f"{line}\n" for line in lines))
    logger.info("wrote %d clips of %s to %s (%d without media left out)", len(lines), "+".join(splits), out, missing)
    return len(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the directory holding mvlrs_v1/ and the split lists")
    p.add_argument("--splits", nargs="+", default=["pretrain"], choices=SPLITS)
    p.add_argument("--out", required=True, help="the manifest to write (JSONL)")
    p.add_argument("--words", type=int, default=2, help="words per timed caption (pretrain transcripts)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        write_manifest(args.root, args.splits, args.out, args.words)
    except (OSError, ValueError) as exc:
        sys.exit(f"data.lrs2_manifest: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
