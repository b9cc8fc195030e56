"""Zero-shot classification through the text tower: no labelled example is used.

Each class is described by text prompts (``Task.prompts``, e.g. "a red circle", "a blue circle" for the
class *circle*); a class's embedding is the mean of its prompts' ``text_vt`` embeddings, normalised
again (prompt ensembling, Radford et al. 2021, section 3.1.4). A video is assigned the class whose
embedding is nearest to its ``video_vt`` embedding in VATT's video-text space (Akbari et al. 2021,
section 4.3, zero-shot video retrieval used the same space).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from data.tokenizer import Tokenizer
from eval.embed import embed_texts


@torch.inference_mode()
def class_embeddings(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    classes: Sequence[str],
    prompts: dict[str, list[str]],
    max_len: int,
) -> torch.Tensor:
    """(C, D_vt): per class, the normalised mean of its prompts' normalised text embeddings."""
    missing = [c for c in classes if not prompts.get(c)]
    if missing:
        raise ValueError(f"no text prompts for class {missing[0]!r}; zero-shot needs prompts for every class")
    texts = [p for c in classes for p in prompts[c]]
    emb = embed_texts(model, tokenizer, texts, max_len, progress=False)  # (P, D_vt), normalised
    owner = torch.tensor([i for i, c in enumerate(classes) for _ in prompts[c]])
    sums = torch.zeros(len(classes), emb.shape[1]).index_add_(0, owner, emb)
    return F.normalize(sums, dim=-1)


@torch.inference_mode()
def predict(model: torch.nn.Module, pooled_video: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Class of each video (N,) from its video tower's AGG output (N, D) and class embeddings (C, D_vt)."""
    head = model.head
    _, vt = head.video(pooled_video.to(next(head.parameters()).device))
    scores = F.normalize(vt.float().cpu(), dim=-1) @ classes.T  # (N, C) cosine similarities
    return scores.argmax(dim=1)
