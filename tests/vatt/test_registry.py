import pytest

import avsr
import vatt
from vatt.registry import Registry


def test_registry_roundtrip_and_unknown_name():
    reg = Registry("toy")

    @reg.register
    def toy_linear(width: int = 3):
        import torch

        return torch.nn.Linear(width, width)

    assert reg.names() == ["toy_linear"]
    assert reg.create("toy_linear", width=5).in_features == 5
    with pytest.raises(KeyError, match="toy_linear"):
        reg.create("toy_lineer")
    with pytest.raises(ValueError, match="twice"):
        reg.register(toy_linear)


def test_public_entry_points_exist():
    assert isinstance(vatt.list_models(), list) and isinstance(avsr.list_models(), list)
    with pytest.raises(KeyError, match="unknown vatt model"):
        vatt.create_model("no_such_model")
    with pytest.raises(KeyError, match="unknown avsr model"):
        avsr.create_model("no_such_model")
