"""Front-ends: raw inputs -> one feature per video frame, ``forward(x, lengths) -> (feats (B, T, D), frames (B,))``.

Every front-end has ``out_dim``; config names become front-end classes in :mod:`avsr.build` only.
"""

from avsr.frontends.audio import ConvAudioFrontend, FbankAudioFrontend, Wav2Vec2AudioFrontend, read_state_dict
from avsr.frontends.frames import frames_for_samples, samples_per_frame, tokens_to_frames
from avsr.frontends.vatt_towers import VattAudioFrontend, VattVideoFrontend
from avsr.frontends.visual import ResNetVideoFrontend

__all__ = [
    "ConvAudioFrontend",
    "FbankAudioFrontend",
    "ResNetVideoFrontend",
    "VattAudioFrontend",
    "VattVideoFrontend",
    "Wav2Vec2AudioFrontend",
    "frames_for_samples",
    "read_state_dict",
    "samples_per_frame",
    "tokens_to_frames",
]
