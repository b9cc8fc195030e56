"""Named model architectures: one way to build a model (``create_model``) and to list them."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFn = Callable[..., nn.Module]


class Registry:
    """Maps architecture names to builder functions that take keyword overrides."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, ModelFn] = {}

    def register(self, fn: ModelFn) -> ModelFn:
        """Decorator: register ``fn`` under its own name."""
        name = fn.__name__
        if name in self._builders:
            raise ValueError(f"{self.kind} model {name!r} is registered twice")
        self._builders[name] = fn
        return fn

    def names(self) -> list[str]:
        return sorted(self._builders)

    def create(self, name: str, **overrides) -> nn.Module:
        if name not in self._builders:
            raise KeyError(f"unknown {self.kind} model {name!r}; registered: {', '.join(self.names()) or '(none)'}")
        return self._builders[name](**overrides)


_REGISTRY = Registry("vatt")
register_model = _REGISTRY.register


def list_models() -> list[str]:
    """Names of every registered VATT architecture, sorted."""
    return _REGISTRY.names()


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered architecture ``name``; ``overrides`` replace fields of its config."""
    return _REGISTRY.create(name, **overrides)
