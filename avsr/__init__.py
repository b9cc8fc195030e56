"""Audio-visual speech recognition: front-ends, fusion, encoder, hybrid CTC/attention head."""

from avsr.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
