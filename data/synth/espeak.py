"""Speech synthesis with espeak-ng through its C library, with exact word and phoneme timings.

The speech corpus (:mod:`data.synth.speech`) needs a waveform plus, for every word and every phoneme,
the sample at which it starts, so that the rendered mouth follows the voice and word timings in the
transcripts are exact. The espeak-ng command line prints phonemes (``-q -x``) but not their times; the
library reports both through its synthesis callback (word and phoneme events carrying the output
sample index), so we call ``libespeak-ng`` with :mod:`ctypes`. One synthesis of a sentence costs a few
milliseconds. The library keeps global state, so there is one :class:`Espeak` per process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Constants from espeak-ng's speak_lib.h (a stable C API since espeak 1.x).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES = 0x100
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7


class EspeakError(RuntimeError):
    """espeak-ng is missing or refused a request; the message says what to do."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language voice name, variant (``m3``, ``f2``, ...), rate (words/min), pitch
    and pitch range (0-100), and extra pause between words in units of 10 ms."""

    name: str = "en-us"
    variant: str = ""
    rate: int = 160
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0

    @property
    def spec(self) -> str:
        return f"{self.name}+{self.variant}" if self.variant else self.name


@dataclass
class Phone:
    """A phoneme as espeak-ng names it (ASCII mnemonics, e.g. ``u:``, ``aI``, ``_:`` for a pause)."""

    symbol: str
    start: int  # sample index at the synthesis rate


@dataclass
class Synthesis:
    """A synthesised sentence: int16 waveform, the rate, word start samples (one per input word) and
    phonemes with start samples. A word ends where the next begins; the last ends at ``end``."""

    wave: np.ndarray  # (S,) int16
    sample_rate: int
    word_starts: list[int]
    phones: list[Phone]
    end: int  # sample where speech ends (start of the final pause)


class Espeak:
    """The process-wide espeak-ng engine (synchronous mode: synthesis returns when done)."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError:
            raise EspeakError(
                "espeak-ng library not found; install it with `sudo apt-get install espeak-ng` (or `make setup`)"
            ) from None
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}); is espeak-ng-data installed?")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        self._callback = _Callback(self._on_audio)  # keep a reference: the C side holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._voice: Voice | None = None

    @classmethod
    def get(cls) -> Espeak:
        """The engine of this process (created on first use; safe after ``fork`` since it is per process)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_audio(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_WORD:
                self._events.append((_EVENT_WORD, ev.sample, str(ev.text_position)))
            elif ev.type == _EVENT_PHONEME:
                self._events.append((_EVENT_PHONEME, ev.sample, ev.id.string.decode("ascii", "replace")))
            i += 1
        return 0

    def set_voice(self, voice: Voice) -> None:
        if voice == self._voice:
            return
        if self._lib.espeak_SetVoiceByName(voice.spec.encode()) != 0:
            raise EspeakError(f"espeak-ng has no voice {voice.spec!r}; list them with `espeak-ng --voices=en`")
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap),
            (_PARAM_VOLUME, 100),
        ):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._voice = voice

    def synthesize(self, words: list[str], voice: Voice) -> Synthesis:
        """Speak ``words`` (espeak text; ``[[...]]`` inserts phoneme mnemonics) as one sentence."""
        self.set_voice(voice)
        self._chunks, self._events = [], []
        text = " ".join(words).encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(text)
        err = self._lib.espeak_Synth(buf, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _PHONEMES, None, None)
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err} for {words!r}")
        wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        # Word events carry the 1-based character position in the text; inline phonemes ([[...]]) can
        # give one word several events, so each word takes the first event inside its own characters.
        bounds, pos = [], 1
        for w in words:
            bounds.append((pos, pos + len(w.encode("utf-8"))))
            pos += len(w.encode("utf-8")) + 1
        starts: list[int | None] = [None] * len(words)
        for kind, sample, where in self._events:
            if kind != _EVENT_WORD:
                continue
            for i, (lo, hi) in enumerate(bounds):
                if lo <= int(where) < hi and starts[i] is None:
                    starts[i] = sample
        if any(s is None for s in starts):
            missing = [w for w, s in zip(words, starts) if s is None]
            raise EspeakError(f"espeak-ng reported no timing for {missing!r} in {words!r}")
        word_starts = [int(s) for s in starts]
        phones = [Phone(sym, s) for kind, s, sym in self._events if kind == _EVENT_PHONEME]
        # Speech ends where the trailing pause starts (espeak closes a sentence with `_:` / `_`).
        end = len(wave)
        for ph in reversed(phones):
            if not ph.symbol.startswith("_"):
                break
            end = ph.start
        return Synthesis(wave, self.sample_rate, word_starts, phones, end)
