"""Named AVSR architectures, built through the same registry type as VATT's."""

from __future__ import annotations

from torch import nn

from vatt.registry import Registry

# AVSR's own entry points over vatt's Registry class, as vatt.registry has them: one pair per library.
_REGISTRY = Registry("avsr")
register_model = _REGISTRY.register


def list_models() -> list[str]:
    """Names of every registered AVSR architecture, sorted."""
    return _REGISTRY.names()


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered AVSR architecture ``name``; ``overrides`` replace fields of its config."""
    return _REGISTRY.create(name, **overrides)
