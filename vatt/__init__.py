"""VATT: transformer towers over raw video, audio and text, trained contrastively."""

from vatt import models  # registers the architectures
from vatt.config import EncoderConfig, VattConfig
from vatt.model import VattModel
from vatt.registry import create_model, list_models, register_model

__all__ = ["EncoderConfig", "VattConfig", "VattModel", "create_model", "list_models", "models", "register_model"]
