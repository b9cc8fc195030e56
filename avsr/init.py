"""Initialisation policy of an AVSR model: which pretrained weights start which part of it.

Front-ends can start from a VATT export's towers (Pan et al. 2022), from torchaudio wav2vec 2.0
weights, or from the front-ends of trained AVSR exports; a whole audio-visual model can start from a
unimodal one (auto_avsr). Exports arrive already read (anything with ``state_dict`` and ``overrides``),
so this module needs torch only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from avsr.frontends.audio import read_state_dict
from avsr.model import AvsrModel
from avsr.units import TokenSet

log = logging.getLogger(__name__)

# The init key that takes each stream's front-end from another AVSR export.
FRONTEND_FROM = {"v": "video_frontend_from", "a": "audio_frontend_from"}


class InitError(ValueError):
    """An initialisation the model cannot take; the message names the ``init.*`` key."""


@dataclass
class InitConfig:
    vatt_export: str = ""  # a VATT export (pretrain.py's run_dir/export) whose towers become front-ends
    frontends: Literal["a", "v", "av"] = "av"  # which front-ends start from it (within model.modalities)
    wav2vec2_weights: str = ""  # torchaudio Wav2Vec2Model state dict (torch.save) for audio_frontend=wav2vec2
    freeze_steps: int = 0  # keep the initialised front-ends frozen for this many steps
    # false: the export's towers as front-ends but with random weights, the baseline of an
    # initialisation comparison (same architecture, same steps)
    load_weights: bool = True
    # Trained AVSR exports (train_avsr.py's run_dir/export; auto_avsr starts audio-visual models from
    # unimodal ones): every weight of avsr_export that fits (AvsrModel.load_avsr_state: the model starts
    # out computing what that export computes), then one front-end from each *_frontend_from. Same units.
    avsr_export: str = ""
    video_frontend_from: str = ""
    audio_frontend_from: str = ""


def frontend_sources(init: InitConfig, m: str) -> list[str]:
    """The ``init`` keys that give the ``"v"`` or ``"a"`` front-end its weights (avsr_export: if it has m)."""
    sources = ["vatt_export"] if init.vatt_export and m in init.frontends else []
    if m == "a" and init.wav2vec2_weights:
        sources.append("wav2vec2_weights")
    if getattr(init, FRONTEND_FROM[m]):
        sources.append(FRONTEND_FROM[m])
    return sources


def check_init(init: InitConfig, modalities: str, overrides: dict[str, Any]) -> None:
    """What the ``init`` section may ask of a model with these streams; :class:`InitError` names the key."""
    if init.vatt_export and not set(init.frontends) & set(modalities):
        raise InitError(f"init.frontends={init.frontends!r} names no stream of model.modalities")
    if init.wav2vec2_weights:
        if "a" not in modalities or overrides.get("audio_frontend") != "wav2vec2":
            raise InitError("init.wav2vec2_weights needs model.overrides.audio_frontend=wav2vec2 and an audio stream")
        if not Path(init.wav2vec2_weights).is_file():
            raise InitError(f"init.wav2vec2_weights {init.wav2vec2_weights!r} not found")
    for m, key in FRONTEND_FROM.items():
        if getattr(init, key) and m not in modalities:
            raise InitError(f"init.{key} is set but model.modalities={modalities!r} has no such stream")
        sources = [k for k in frontend_sources(init, m) if m in modalities]
        if len(sources) > 1:
            raise InitError(f"{' and '.join('init.' + k for k in sources)} both initialise the {m!r} front-end")
    if init.freeze_steps > 0 and init.vatt_export and not init.load_weights and not init.wav2vec2_weights:
        raise InitError("init.freeze_steps would freeze random front-ends: init.load_weights is false")
    if init.freeze_steps > 0 and not (init.avsr_export or any(frontend_sources(init, m) for m in "av")):
        raise InitError(
            "init.freeze_steps needs pretrained front-ends (init.vatt_export, init.wav2vec2_weights, "
            "init.avsr_export or init.*_frontend_from)"
        )


def check_units(avsr_inits: dict[str, Any], tokens: TokenSet) -> None:
    """Output layers and decoder embeddings only carry over between models of the same units."""
    for key, export in avsr_inits.items():
        if export.kind == "avsr_frontend":  # a front-end alone has no output units
            continue
        if "tokens" not in export.extra or TokenSet.from_dict(export.extra["tokens"]) != tokens:
            raise InitError(f"init.{key}: that export's units differ from this run's ({len(tokens.units)} units)")


def init_frontends(
    model: AvsrModel, init: InitConfig, modalities: str, vatt_export: Any, avsr_inits: dict[str, Any]
) -> str:
    """Load pretrained weights (AVSR exports first); returns the streams whose front-ends were initialised.

    ``vatt_export`` and the values of ``avsr_inits`` are read exports (``state_dict``, ``overrides``).
    """
    done = ""
    if "avsr_export" in avsr_inits:
        left = model.load_avsr_state(avsr_inits["avsr_export"].state_dict)
        theirs = avsr_inits["avsr_export"].overrides["modalities"]
        done += "".join(m for m in "va" if m in theirs and m in modalities)
        log.info("started from the AVSR export %s (%d entries left as built)", init.avsr_export, len(left))
    for m, key in FRONTEND_FROM.items():
        if key in avsr_inits:
            prefix = "video_frontend." if m == "v" else "audio_frontend."
            model.load_frontend_state(m, avsr_inits[key].state_dict, prefix=prefix)
            done += m
            what = "self-supervised front-end" if avsr_inits[key].kind == "avsr_frontend" else "AVSR export"
            log.info("%s front-end initialised from the %s %s", m, what, getattr(init, key))
    if vatt_export is not None and not init.load_weights:
        log.info("front-ends built as the towers of %s, weights left random", init.vatt_export)
    elif vatt_export is not None:
        towers = "".join(m for m in "va" if m in init.frontends and m in modalities)
        for m in towers:
            model.load_frontend_state(m, vatt_export.state_dict)
        done += towers
        log.info("front-ends %r initialised from the VATT export %s", towers, init.vatt_export)
    if init.wav2vec2_weights:
        model.load_frontend_state("a", read_state_dict(init.wav2vec2_weights))
        done += "a"
        log.info("audio front-end initialised from %s", init.wav2vec2_weights)
    return "".join(m for m in "va" if m in done)


def frontend_parameters(model: AvsrModel, streams: str) -> list[torch.nn.Parameter]:
    """The parameters of the front-ends of ``streams`` ("a", "v" or "av")."""
    return [p for m in streams for p in (model.video_frontend if m == "v" else model.audio_frontend).parameters()]


def vatt_frontend_overrides(init: InitConfig, modalities: str, vatt_export: Any) -> dict[str, Any]:
    """Model overrides that make the chosen streams' front-ends the towers of a VATT export."""
    towers = set(init.frontends) & set(modalities)
    overrides: dict[str, Any] = {
        f"{name}_frontend": "vatt" for m, name in (("v", "video"), ("a", "audio")) if m in towers
    }
    overrides.update(
        vatt_model=vatt_export.model_name,
        vatt_overrides=vatt_export.overrides,
        vatt_image_size=int(vatt_export.preprocess["image_size"]),
        vatt_sample_rate=int(vatt_export.preprocess["sample_rate"]),
    )
    return overrides


class FrozenFrontends:
    """The pretrained front-ends of ``streams`` kept frozen until step ``until`` (none when resuming past it).

    Freeze after the model is wrapped for distributed training (DDP must see every parameter as
    trainable when it is built); call :meth:`drop_grads` before each update and :meth:`after_step`.
    """

    def __init__(self, model: AvsrModel, streams: str, until: int, step: int) -> None:
        self.model, self.streams, self.until = model, streams, until
        self.params: list[torch.nn.Parameter] = []
        if streams and step < until:
            model.set_frontend_frozen(True, streams)
            self.params = frontend_parameters(model, streams)
            log.info("front-ends %r frozen until step %d", streams, until)

    def drop_grads(self) -> None:
        for p in self.params:  # no decay or momentum step on frozen weights, whatever DDP left
            p.grad = None

    def after_step(self, step: int) -> None:
        if self.params and step >= self.until:
            self.model.set_frontend_frozen(False, self.streams)
            self.params = []
            log.info("step %d: front-ends %r unfrozen", step, self.streams)
