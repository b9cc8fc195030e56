"""Sequence encoders over fused per-frame features, with lengths: Conformer or transformer.

Both add sinusoidal positions to their input and return ``(x (B, T, D), lengths (B,))`` with padded
frames zeroed.

``ConformerEncoder`` uses the layers of ``torchaudio.models.Conformer`` (Gulati et al. 2020) but runs
them here: torchaudio's layer lets padded frames into the depthwise convolution, so an utterance would
encode differently alone and in a padded batch. This loop zeroes padding right before every depthwise
convolution (as ESPnet and WeNet do); with no padding it computes exactly torchaudio's forward. The
convolution module's BatchNorm uses batch statistics in training (padding zeros included) and running
statistics in eval, where the encoder is exactly padding-invariant.
"""

from __future__ import annotations

import torchaudio
from torch import Tensor, nn
from torchaudio.models.conformer import ConformerLayer

from avsr.masks import make_pad_mask
from avsr.positions import sinusoidal_positions


def _conv_module(layer: ConformerLayer, x: Tensor, pad: Tensor) -> Tensor:
    """torchaudio's convolution module on (T, B, D) with padding zeroed before the depthwise conv."""
    cm = layer.conv_module
    y = cm.layer_norm(x.transpose(0, 1)).transpose(1, 2)  # (B, D, T)
    pointwise, glu, depthwise, *rest = cm.sequential
    y = glu(pointwise(y))
    y = y.masked_fill(pad[:, None, :], 0.0)
    y = depthwise(y)
    for m in rest:
        y = m(y)
    return x + y.permute(2, 0, 1)  # (T, B, D)


def conformer_layer_forward(layer: ConformerLayer, x: Tensor, pad: Tensor) -> Tensor:
    """One torchaudio ConformerLayer on (T, B, D), ``pad`` (B, T) True on padding."""
    x = layer.ffn1(x) * 0.5 + x
    if layer.convolution_first:
        x = _conv_module(layer, x, pad)
    y = layer.self_attn_layer_norm(x)
    y, _ = layer.self_attn(query=y, key=y, value=y, key_padding_mask=pad, need_weights=False)
    x = layer.self_attn_dropout(y) + x
    if not layer.convolution_first:
        x = _conv_module(layer, x, pad)
    x = layer.ffn2(x) * 0.5 + x
    return layer.final_layer_norm(x)


def _add_positions(x: Tensor, lengths: Tensor, dropout: nn.Module) -> tuple[Tensor, Tensor]:
    """The input of both encoders: (B, T, D) plus sinusoidal positions, then dropout; and the (B, T)
    padding mask (True on padding)."""
    t, d = x.shape[1:]
    return dropout(x + sinusoidal_positions(t, d, device=x.device)), make_pad_mask(lengths, t)


class ConformerEncoder(nn.Module):
    """Sinusoidal positions + torchaudio Conformer layers, padding-exact."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        conv_kernel_size: int = 31,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.conformer = torchaudio.models.Conformer(
            input_dim=embed_dim,
            num_heads=num_heads,
            ffn_dim=int(mlp_ratio * embed_dim),
            num_layers=depth,
            depthwise_conv_kernel_size=conv_kernel_size,
            dropout=dropout,
        )
        self.dropout = nn.Dropout(dropout)
        self.embed_dim = embed_dim

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, pad = _add_positions(x, lengths, self.dropout)
        x = x.masked_fill(pad[:, :, None], 0.0).transpose(0, 1)  # (T, B, D)
        for layer in self.conformer.conformer_layers:
            x = conformer_layer_forward(layer, x, pad)
        x = x.transpose(0, 1).masked_fill(pad[:, :, None], 0.0)  # (B, T, D)
        return x, lengths


class TransformerEncoder(nn.Module):
    """Sinusoidal positions + pre-LN ``nn.TransformerEncoder`` with a key padding mask."""

    def __init__(
        self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            embed_dim,
            num_heads,
            dim_feedforward=int(mlp_ratio * embed_dim),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(embed_dim), enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.embed_dim = embed_dim

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, pad = _add_positions(x, lengths, self.dropout)
        x = self.layers(x, src_key_padding_mask=pad)
        return x.masked_fill(pad[:, :, None], 0.0), lengths
