"""Phonemes to mouth shapes: viseme targets per espeak-ng phoneme and a coarticulated trajectory.

Each phoneme maps to a target mouth shape given by five numbers in [0, 1] (:data:`PARAMS`): lip
opening, mouth width, lip rounding/protrusion, teeth visibility and tongue visibility. Sounds made
out of sight share a shape (p/b/m all close the lips, t/d/n look alike, k/g/h take the shape of their
neighbours), so the mouth alone leaves words ambiguous, as real lip reading does.

Shapes are blended over time with a dominance model of coarticulation (Cohen & Massaro, 1993): target
``k`` at time ``c_k`` pulls the mouth with weight ``D_k(t) = a_k exp(-((t - c_k) / tau_k)^2)`` and the
shape at ``t`` is ``sum_k D_k(t) v_k / sum_k D_k(t)``. Lip closure for bilabials carries a large weight
on the opening so the lips really meet, while velars and /h/ carry little and borrow the vowel's shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

PARAMS = ("open", "width", "round", "teeth", "tongue")

# Mouth at rest (lips together, relaxed).
REST = (0.02, 0.45, 0.15, 0.0, 0.0)


@dataclass(frozen=True)
class Viseme:
    """A target shape (open, width, round, teeth, tongue), its dominance weight and, for lip closure or
    lip-teeth contact, a larger weight on the opening alone."""

    shape: tuple[float, float, float, float, float]
    weight: float = 1.0
    open_weight: float | None = None


_V = Viseme
# Visemes by phoneme class. Keys are espeak-ng's ASCII phoneme names (see `espeak-ng -x`).
_BILABIAL = _V((0.0, 0.45, 0.15, 0.0, 0.0), 1.5, 40.0)
_LABIODENTAL = _V((0.1, 0.48, 0.05, 1.0, 0.0), 1.5, 10.0)
_DENTAL = _V((0.28, 0.5, 0.0, 0.6, 1.0), 1.5)
_ALVEOLAR = _V((0.2, 0.52, 0.1, 0.7, 0.25), 0.6)
_SIBILANT = _V((0.12, 0.6, 0.05, 1.0, 0.0), 1.2, 4.0)
_POSTALVEOLAR = _V((0.18, 0.32, 0.75, 0.9, 0.0), 1.5, 3.0)
_LATERAL = _V((0.35, 0.5, 0.1, 0.6, 0.8), 0.8)
_RHOTIC = _V((0.2, 0.35, 0.6, 0.3, 0.0), 1.0)
_LABIOVELAR = _V((0.1, 0.12, 1.0, 0.0, 0.0), 2.0, 4.0)
_PALATAL = _V((0.2, 0.75, 0.0, 0.6, 0.2), 0.8)
_VELAR = _V((0.3, 0.5, 0.15, 0.3, 0.0), 0.35)
_GLOTTAL = _V((0.35, 0.5, 0.1, 0.2, 0.0), 0.25)

_FLEECE = _V((0.2, 1.0, 0.0, 0.9, 0.1))
_KIT = _V((0.3, 0.85, 0.0, 0.7, 0.1))
_DRESS = _V((0.45, 0.8, 0.0, 0.6, 0.1))
_TRAP = _V((0.75, 0.72, 0.0, 0.4, 0.1))
_PALM = _V((0.92, 0.55, 0.05, 0.3, 0.1))
_LOT = _V((0.7, 0.4, 0.5, 0.2, 0.0))
_THOUGHT = _V((0.55, 0.3, 0.8, 0.1, 0.0))
_STRUT = _V((0.55, 0.55, 0.1, 0.3, 0.1))
_SCHWA = _V((0.35, 0.5, 0.1, 0.3, 0.1), 0.5)
_NURSE = _V((0.3, 0.42, 0.5, 0.3, 0.0))
_FOOT = _V((0.25, 0.3, 0.75, 0.1, 0.0))
_GOOSE = _V((0.15, 0.15, 1.0, 0.0, 0.0), 1.2)
_PAUSE = _V(REST, 0.8)

# Single targets and diphthongs (a sequence of targets across the phoneme).
_TABLE: dict[str, tuple[Viseme, ...]] = {
    "p": (_BILABIAL,),
    "b": (_BILABIAL,),
    "m": (_BILABIAL,),
    "f": (_LABIODENTAL,),
    "v": (_LABIODENTAL,),
    "T": (_DENTAL,),
    "D": (_DENTAL,),
    "t": (_ALVEOLAR,),
    "d": (_ALVEOLAR,),
    "n": (_ALVEOLAR,),
    "s": (_SIBILANT,),
    "z": (_SIBILANT,),
    "S": (_POSTALVEOLAR,),
    "Z": (_POSTALVEOLAR,),
    "tS": (_POSTALVEOLAR,),
    "dZ": (_POSTALVEOLAR,),
    "l": (_LATERAL,),
    "@L": (_SCHWA, _LATERAL),
    "r": (_RHOTIC,),
    "w": (_LABIOVELAR,),
    "j": (_PALATAL,),
    "k": (_VELAR,),
    "g": (_VELAR,),
    "N": (_VELAR,),
    "x": (_VELAR,),
    "h": (_GLOTTAL,),
    "?": (_GLOTTAL,),
    "i": (_FLEECE,),
    "i:": (_FLEECE,),
    "I": (_KIT,),
    "e": (_DRESS,),
    "E": (_DRESS,),
    "a": (_TRAP,),
    "aa": (_TRAP,),
    "A": (_PALM,),
    "A:": (_PALM,),
    "0": (_LOT,),
    "O": (_THOUGHT,),
    "O:": (_THOUGHT,),
    "o": (_THOUGHT,),
    "V": (_STRUT,),
    "@": (_SCHWA,),
    "3": (_NURSE,),
    "3:": (_NURSE,),
    "U": (_FOOT,),
    "u": (_GOOSE,),
    "u:": (_GOOSE,),
    "y": (_GOOSE,),
    "aI": (_TRAP, _KIT),
    "aI@": (_TRAP, _KIT, _SCHWA),
    "aU": (_TRAP, _FOOT),
    "aU@": (_TRAP, _FOOT, _SCHWA),
    "eI": (_DRESS, _KIT),
    "oU": (_THOUGHT, _FOOT),
    "OI": (_THOUGHT, _KIT),
    "i@": (_FLEECE, _SCHWA),
    "I@": (_KIT, _SCHWA),
    "e@": (_DRESS, _SCHWA),
    "U@": (_FOOT, _SCHWA),
    "A@": (_PALM, _SCHWA),
    "O@": (_THOUGHT, _SCHWA),
    "o@": (_THOUGHT, _SCHWA),
    "_": (_PAUSE,),
}
_KEYS_LONGEST_FIRST = sorted(_TABLE, key=len, reverse=True)

# Marks espeak-ng reports as phoneme events that are not sounds of their own (palatalisation, stress).
_MODIFIERS = {";", ",", "'", "="}


def known_phoneme(symbol: str) -> bool:
    """Whether the table has ``symbol`` (or it is a modifier); unknown ones fall back to the schwa."""
    return symbol in _MODIFIERS or any(symbol.startswith(k) for k in _KEYS_LONGEST_FIRST)


def visemes_for(symbol: str) -> tuple[Viseme, ...] | None:
    """Targets for an espeak-ng phoneme name: the longest table key it starts with (so ``aI2`` is ``aI``,
    ``r-`` is ``r``, ``t#`` is ``t``); ``None`` for modifiers that carry no sound."""
    if not symbol or symbol in _MODIFIERS:
        return None
    for key in _KEYS_LONGEST_FIRST:
        if symbol.startswith(key):
            return _TABLE[key]
    logger.debug("no viseme for espeak phoneme %r; using the neutral vowel", symbol)
    return (_SCHWA,)


@dataclass(frozen=True)
class Articulation:
    """A speaker's manner: gains on opening, width and rounding, and how far shapes spread in time."""

    open_gain: float = 1.0
    width_gain: float = 1.0
    round_gain: float = 1.0
    spread: float = 1.0


def keyframes(
    phones: list[tuple[str, float, float]], duration: float, style: Articulation
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Targets from timed phonemes ``(symbol, start_s, end_s)``: centres (K,), widths (K,), shapes (K, 5)
    and weights (K, 5). The mouth rests before the first and after the last phoneme."""
    centres, widths, shapes, weights = [], [], [], []

    def add(v: Viseme, centre: float, width: float) -> None:
        w = np.full(len(PARAMS), v.weight)
        if v.open_weight is not None:
            w[0] = v.open_weight
        centres.append(centre)
        widths.append(width)
        shapes.append(v.shape)
        weights.append(w)

    rest = _V(REST, 1.0)
    first = phones[0][1] if phones else duration
    last = phones[-1][2] if phones else 0.0
    add(rest, min(0.0, first - 0.2), 0.1)
    for symbol, start, end in phones:
        targets = visemes_for(symbol)
        if targets is None or end <= start:
            continue
        n = len(targets)
        step = (end - start) / n
        for i, v in enumerate(targets):
            # Diphthongs glide: each target owns an equal slice of the phoneme.
            centre = start + (i + 0.5) * step
            add(v, centre, style.spread * (0.45 * step + 0.02))
    add(rest, max(duration, last + 0.2), 0.1)
    return np.array(centres), np.array(widths), np.array(shapes, dtype=np.float64), np.array(weights)


def trajectory(
    phones: list[tuple[str, float, float]],
    num_frames: int,
    fps: float,
    style: Articulation = Articulation(),
    subsamples: int = 4,
) -> np.ndarray:
    """Mouth shape per video frame -> (num_frames, 5) float32 in [0, 1], averaged over each frame's
    exposure (``subsamples`` instants per frame) like a camera integrating light."""
    duration = num_frames / fps
    centres, widths, shapes, weights = keyframes(phones, duration, style)
    t = (np.arange(num_frames * subsamples) + 0.5) / (fps * subsamples)  # (N,)
    d = (t[:, None] - centres[None, :]) / widths[None, :]  # (N, K)
    dom = np.exp(-(d**2))[:, :, None] * weights[None, :, :] + 1e-9  # (N, K, 5)
    values = (dom * shapes[None]).sum(1) / dom.sum(1)  # (N, 5)
    values = values.reshape(num_frames, subsamples, len(PARAMS)).mean(1)  # (T, 5)
    values[:, 0] *= style.open_gain
    values[:, 1] = 0.5 + (values[:, 1] - 0.5) * style.width_gain
    values[:, 2] *= style.round_gain
    return np.clip(values, 0.0, 1.0).astype(np.float32)
