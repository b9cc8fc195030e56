"""Building blocks of the VATT towers, one concept per module."""

from vatt.layers.attention import Attention
from vatt.layers.batchnorm import CrossProcessBatchNorm1d
from vatt.layers.drop import DropPath, DropToken
from vatt.layers.mask import make_pad_mask
from vatt.layers.mlp import Mlp
from vatt.layers.patch_embed import SpectrogramEmbed, VoxelEmbed, WaveformEmbed, WordEmbed
from vatt.layers.pos_embed import SpatioTemporalPositions, TemporalPositions, resample_positions
from vatt.layers.rel_pos_bias import RelativePositionBias, relative_position_bucket
from vatt.layers.word_embed import load_word_embeddings

__all__ = [
    "Attention",
    "CrossProcessBatchNorm1d",
    "DropPath",
    "DropToken",
    "Mlp",
    "RelativePositionBias",
    "SpatioTemporalPositions",
    "SpectrogramEmbed",
    "TemporalPositions",
    "VoxelEmbed",
    "WaveformEmbed",
    "WordEmbed",
    "load_word_embeddings",
    "make_pad_mask",
    "relative_position_bucket",
    "resample_positions",
]
