"""VATT: transformer towers over raw video, audio and text, trained contrastively."""

from vatt.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
