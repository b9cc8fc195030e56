"""SentencePiece text tokenizer: pad id 0, unk id 1, no bos/eos, captions cut to ``max_len`` tokens.

Train one from a manifest's captions::

    python -m data.tokenizer train --manifest M --vocab-size N --out F.model

or load a user's ``.model`` with :class:`Tokenizer` (it must use pad 0 / unk 1; the text tower's
embedding table and the masks depend on it).
"""

from __future__ import annotations

import argparse
import io
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from data.files import atomic_path

logger = logging.getLogger(__name__)

PAD_ID = 0
UNK_ID = 1


class Tokenizer:
    """A SentencePiece model with batch encoding to padded id tensors plus lengths.

    ``encode_batch`` remembers the pieces of up to ``cache_size`` distinct texts: a training run meets
    the same captions every epoch, and encoding them again costs a fifth of a clip's loading time.
    """

    cache_size = 200_000

    def __init__(self, model_file: str | Path) -> None:
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {self.model_file}")
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self._pieces: dict[str, list[int]] = {}
        if self.sp.pad_id() != PAD_ID or self.sp.unk_id() != UNK_ID:
            raise ValueError(
                f"{self.model_file}: tokenizer must use pad id {PAD_ID} and unk id {UNK_ID}, "
                f"got pad {self.sp.pad_id()} and unk {self.sp.unk_id()}; retrain with data.tokenizer"
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (N, max_len) int64 padded with 0 and cut at ``max_len``, and lengths (N,) int64."""
        ids = torch.full((len(texts), max_len), PAD_ID, dtype=torch.int64)
        lengths = torch.zeros(len(texts), dtype=torch.int64)
        new = [t for t in dict.fromkeys(texts) if t not in self._pieces]
        encoded = dict(zip(new, self.sp.encode(new))) if new else {}
        if len(self._pieces) + len(encoded) <= self.cache_size:
            self._pieces.update(encoded)
        for i, text in enumerate(texts):
            pieces = (self._pieces[text] if text in self._pieces else encoded[text])[:max_len]
            ids[i, : len(pieces)] = torch.tensor(pieces, dtype=torch.int64)
            lengths[i] = len(pieces)
        return ids, lengths

    def decode(self, ids: torch.Tensor | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Text for one id sequence (str) or a batch (list[str]); pad ids are dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            return [self.sp.decode([i for i in row if i != PAD_ID]) for row in ids]
        return self.sp.decode([int(i) for i in ids if i != PAD_ID])


def train_tokenizer(
    texts: Iterable[Any],
    vocab_size: int,
    out: str | Path,
    model_type: str = "bpe",
    lowercase: bool = True,
) -> Path:
    """Train a SentencePiece model on ``texts`` and write it atomically to ``out`` (a ``.model`` file).

    ``texts`` holds strings or manifest entries (whose captions are used).

    ``vocab_size`` is a ceiling: a corpus with fewer distinct pieces gets a smaller vocabulary
    (``hard_vocab_limit=False``), so tiny corpora train without fuss. A size below the number of
    distinct characters fails with a one-line error naming the smallest size that works. BPE is the
    default because with a soft limit it keeps merging up to whole words on a small closed-vocabulary
    corpus (the shapes captions: ~600 pieces, ~20 tokens a caption), where unigram stops early with
    ~130 sub-word pieces and captions of ~34 tokens; ``model_type="unigram"`` remains available.
    """
    sentences = [t.strip() for t in _strings(texts) if t and t.strip()]
    if not sentences:
        raise ValueError("no caption text to train a tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as exc:
        found = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(exc))
        if found:
            need = int(found.group(2)) + 2  # characters + pad + unk
            raise ValueError(
                f"vocab_size {vocab_size} is too small: the captions use {found.group(2)} distinct characters; "
                f"use at least {need}"
            ) from None
        raise ValueError(f"SentencePiece training failed: {str(exc).splitlines()[0]}") from None
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_bytes(model.getvalue())
    size = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    if size < vocab_size:
        logger.info("tokenizer: corpus supports %d pieces (asked for %d)", size, vocab_size)
    logger.info("wrote tokenizer %s (vocab %d, %d captions)", out, size, len(sentences))
    return out


def _strings(items: Iterable[Any]) -> Iterable[str]:
    for item in items:
        if isinstance(item, str):
            yield item
        else:  # a ManifestEntry (duck-typed: importing data.manifest here would pull in the media stack)
            yield from (c.text for c in item.captions)


def main(argv: list[str] | None = None) -> None:
    from data.cli import setup_logging
    from data.manifest import ManifestError, caption_texts, read_manifest

    parser = argparse.ArgumentParser(prog="python -m data.tokenizer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train a SentencePiece model on a manifest's captions")
    tr.add_argument("--manifest", required=True, nargs="+", help="JSONL manifest(s) whose captions to use")
    tr.add_argument("--vocab-size", type=int, required=True)
    tr.add_argument("--out", required=True, help="output .model file")
    tr.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "word", "char"])
    tr.add_argument("--keep-case", action="store_true", help="do not lowercase")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        texts = [t for m in args.manifest for t in caption_texts(read_manifest(m))]
        train_tokenizer(texts, args.vocab_size, args.out, args.model_type, lowercase=not args.keep_case)
    except (ManifestError, ValueError, OSError) as exc:
        sys.exit(f"data.tokenizer: {exc}")


if __name__ == "__main__":
    main()
