"""Reading a frozen word-embedding matrix and its vocabulary from local files (VATT's word2vec input).

The paper's 300-d word2vec table cannot ship with the project; a user who has one (or any other) points
``text_embed_file`` at it. Formats:
- word2vec text (``.txt``/``.vec``): optional header ``"<count> <dim>"``, then ``token v1 ... vdim`` per line;
  the tokens form the vocabulary.
- a torch file (``.pt``/``.pth``), read with ``weights_only=True``: a (V, d) tensor, or a dict with a
  ``"weight"`` tensor and optionally a ``"vocab"`` list of tokens.
``text_vocab_file`` (one token per line, line i = id i) gives or replaces the vocabulary. Ids follow the
project's tokenizer contract: id 0 is padding, id 1 unknown, so row 0 and 1 of the matrix belong to them.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _read_vocab(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]


def load_word_embeddings(matrix_file: str | Path, vocab_file: str | Path = "") -> tuple[torch.Tensor, list[str] | None]:
    """Return ``(matrix (V, d) float32, vocabulary or None)``; raises ``ValueError`` with one clear line."""
    path = Path(matrix_file)
    if not path.is_file():
        raise ValueError(f"text_embed_file {str(path)!r} does not exist")
    vocab: list[str] | None = None
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if "weight" not in obj:
                raise ValueError(f"{path}: a dict needs a 'weight' tensor, found keys {sorted(obj)}")
            matrix, vocab = obj["weight"], obj.get("vocab")
        else:
            matrix = obj
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D tensor of word embeddings")
    else:
        rows: list[list[float]] = []
        vocab = []
        with path.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                parts = line.rstrip("\n").rstrip().split(" ")
                if i == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec header "<count> <dim>"
                if not parts or parts == [""]:
                    continue
                vocab.append(parts[0])
                rows.append([float(v) for v in parts[1:]])
        if not rows or len({len(r) for r in rows}) != 1:
            raise ValueError(f"{path}: every line must be a token followed by the same number of values")
        matrix = torch.tensor(rows)
    if vocab_file:
        vocab = _read_vocab(Path(vocab_file))
    if vocab is not None and len(vocab) != matrix.shape[0]:
        raise ValueError(f"vocabulary has {len(vocab)} tokens but the matrix has {matrix.shape[0]} rows")
    return matrix.float(), (list(vocab) if vocab is not None else None)
