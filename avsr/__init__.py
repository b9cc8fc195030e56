"""Audio-visual speech recognition: front-ends, fusion, encoder, hybrid CTC/attention head, joint decoding.

Public API::

    avsr.create_model(name, **overrides) / avsr.list_models()     registered architectures (avsr.models)
    avsr.AvsrConfig, avsr.AvsrModel                                 config and model (avsr.model)
    avsr.TokenSet                                                   output units: blank 0, ..., sos/eos last
    avsr.HybridLoss                                                 ctc_weight * CTC + (1 - ctc_weight) * CE
    avsr.decoding.greedy_ctc / beam_search / beam_search_reference  decoding
"""

from avsr import decoding, models  # noqa: F401  (models registers the architectures)
from avsr.config import AvsrConfig
from avsr.loss import HybridLoss
from avsr.model import AvsrModel
from avsr.registry import create_model, list_models, register_model
from avsr.units import TokenSet

__all__ = [
    "AvsrConfig",
    "AvsrModel",
    "HybridLoss",
    "TokenSet",
    "create_model",
    "decoding",
    "list_models",
    "register_model",
]
