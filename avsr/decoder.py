"""Attention decoder: a pre-LN transformer decoder (causal self-attention, cross-attention to the encoder).

Two ways to run it, which compute the same numbers:

* ``forward(tokens, memory, memory_lengths)`` — teacher forcing over whole target prefixes (training),
  causal mask inside;
* ``init_state(memory, memory_lengths)`` then ``step(last_tokens, state)`` — one token per hypothesis per
  call with cached keys and values (beam search). ``DecoderState.select(index)`` reorders or expands the
  hypotheses (beam backpointers) without recomputing anything.

Token embeddings are scaled by sqrt(D) and summed with sinusoidal positions. The output projection is
not tied to the embedding (exports are safetensors, which refuse shared storage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsr.masks import make_valid_mask
from avsr.positions import sinusoidal_positions


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, H, N, hd)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        q = self.heads(self.q(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        b, h, n, hd = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * hd))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = _Attention(dim, num_heads, dropout)
        self.norm3 = nn.LayerNorm(dim)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)


@dataclass
class DecoderState:
    """Cached keys/values for N = B * beams hypotheses, hypothesis n belonging to utterance n // beams.

    ``self_k``/``self_v``: per layer (N, H, i, hd) for the i tokens fed so far; ``cross_k``/``cross_v``: per
    layer (B, H, T, hd), shared by the beams of an utterance (their queries attend together);
    ``memory_mask`` (B, 1, 1, T) True on real frames.
    """

    self_k: list[Tensor]
    self_v: list[Tensor]
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    memory_mask: Tensor
    beams: int = 1
    position: int = 0

    def select(self, index: Tensor) -> DecoderState:
        """Hypothesis rows ``index`` (N,): beam backpointers, which must stay within their utterance."""
        pick = lambda ts: [t.index_select(0, index) for t in ts]  # noqa: E731
        return DecoderState(
            pick(self.self_k),
            pick(self.self_v),
            self.cross_k,
            self.cross_v,
            self.memory_mask,
            self.beams,
            self.position,
        )

    def select_utterances(self, utts: Tensor) -> DecoderState:
        """Keep utterances ``utts`` (B',) and all their beams (finished utterances leave the batch)."""
        rows = (utts[:, None] * self.beams + torch.arange(self.beams, device=utts.device)).flatten()
        pick = lambda ts, idx: [t.index_select(0, idx) for t in ts]  # noqa: E731
        return DecoderState(
            pick(self.self_k, rows),
            pick(self.self_v, rows),
            pick(self.cross_k, utts),
            pick(self.cross_v, utts),
            self.memory_mask.index_select(0, utts),
            self.beams,
            self.position,
        )


class TransformerDecoder(nn.Module):
    """Tokens (with sos first) + encoder memory -> next-token logits over the units."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        nn.init.normal_(self.embed.weight, std=embed_dim**-0.5)
        self.layers = nn.ModuleList(DecoderLayer(embed_dim, num_heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)
        self.embed_dim = embed_dim

    def _embed(self, tokens: Tensor, offset: int) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.embed_dim)
        x = x + sinusoidal_positions(tokens.shape[1], self.embed_dim, offset, device=tokens.device)
        return self.dropout(x)

    @staticmethod
    def _memory_mask(memory_lengths: Tensor, t: int) -> Tensor:
        return make_valid_mask(memory_lengths, t)[:, None, None, :]  # (B, 1, 1, T), True = attend

    def forward(self, tokens: Tensor, memory: Tensor, memory_lengths: Tensor) -> Tensor:
        """(B, L) input tokens, (B, T, D) memory -> (B, L, V) logits; position l sees tokens <= l."""
        mask = self._memory_mask(memory_lengths, memory.shape[1])
        x = self._embed(tokens, 0)
        for layer in self.layers:
            h = layer.norm1(x)
            k, v = layer.self_attn.keys_values(h)
            x = x + layer.drop(layer.self_attn.attend(h, k, v, causal=True))
            k, v = layer.cross_attn.keys_values(memory)
            x = x + layer.drop(layer.cross_attn.attend(layer.norm2(x), k, v, mask))
            x = x + layer.drop(layer.mlp(layer.norm3(x)))
        return self.head(self.norm(x))  # (B, L, V)

    def init_state(self, memory: Tensor, memory_lengths: Tensor, beams: int = 1) -> DecoderState:
        """Cache the cross-attention keys/values of ``memory`` (B, T, D) once; room for ``beams`` per utterance."""
        cross = [layer.cross_attn.keys_values(memory) for layer in self.layers]
        heads = self.layers[0].self_attn.num_heads
        empty = memory.new_zeros(memory.shape[0] * beams, heads, 0, self.embed_dim // heads)
        return DecoderState(
            self_k=[empty] * len(self.layers),
            self_v=[empty] * len(self.layers),
            cross_k=[k for k, _ in cross],
            cross_v=[v for _, v in cross],
            memory_mask=self._memory_mask(memory_lengths, memory.shape[1]),
            beams=beams,
        )

    def step(self, last_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """Feed one token per hypothesis (N,) -> next-token log-probabilities (N, V) and the grown state."""
        n, beams = last_tokens.shape[0], state.beams
        x = self._embed(last_tokens[:, None], state.position)  # (N, 1, D)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x)
            k, v = layer.self_attn.keys_values(h)
            k = torch.cat([state.self_k[i], k], dim=2)  # (N, H, position + 1, hd)
            v = torch.cat([state.self_v[i], v], dim=2)
            new_k.append(k)
            new_v.append(v)
            x = x + layer.drop(layer.self_attn.attend(h, k, v))
            # The beams of an utterance query its memory together: (B, beams, D) against (B, H, T, hd).
            h = layer.norm2(x).view(n // beams, beams, -1)
            y = layer.cross_attn.attend(h, state.cross_k[i], state.cross_v[i], state.memory_mask)
            x = x + layer.drop(y.reshape(n, 1, -1))
            x = x + layer.drop(layer.mlp(layer.norm3(x)))
        logits = self.head(self.norm(x[:, 0]))  # (N, V)
        state = DecoderState(
            new_k, new_v, state.cross_k, state.cross_v, state.memory_mask, state.beams, state.position + 1
        )
        return logits.log_softmax(-1), state
