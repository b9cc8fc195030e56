import json

import pytest
import torch

from data.export import ExportError, read_export, save_export


def test_export_roundtrip_and_fingerprint(tmp_path):
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"tokenizer-bytes")
    sd = {"w": torch.randn(3, 4), "b": torch.arange(4)}
    path = save_export(
        tmp_path / "export",
        kind="vatt",
        model_name="m",
        overrides={"depth": 2},
        state_dict=sd,
        preprocess={"fps": 10.0},
        tokenizer_file=tok,
    )
    ex = read_export(path, kind="vatt")
    assert ex.model_name == "m" and ex.overrides == {"depth": 2} and ex.preprocess == {"fps": 10.0}
    assert all(torch.equal(ex.state_dict[k], v) for k, v in sd.items())
    assert ex.tokenizer_path.read_bytes() == b"tokenizer-bytes"
    # Same content, same fingerprint; different weights, different fingerprint.
    again = save_export(
        tmp_path / "export2",
        kind="vatt",
        model_name="m",
        overrides={"depth": 2},
        state_dict=sd,
        preprocess={"fps": 10.0},
        tokenizer_file=tok,
    )
    assert read_export(again).fingerprint == ex.fingerprint
    sd2 = dict(sd, w=sd["w"] + 1)
    other = save_export(
        tmp_path / "export3",
        kind="vatt",
        model_name="m",
        overrides={"depth": 2},
        state_dict=sd2,
        preprocess={"fps": 10.0},
        tokenizer_file=tok,
    )
    assert read_export(other).fingerprint != ex.fingerprint
    # Overwriting an export replaces it whole.
    save_export(path, kind="vatt", model_name="m", overrides={}, state_dict=sd2, preprocess={})
    assert json.loads((path / "export.json").read_text())["tokenizer"] is None


def test_export_errors_are_one_line(tmp_path):
    with pytest.raises(ExportError, match="not found") as exc:
        read_export(tmp_path / "missing")
    assert "\n" not in str(exc.value)
    path = save_export(
        tmp_path / "e", kind="avsr", model_name="m", overrides={}, state_dict={"w": torch.ones(1)}, preprocess={}
    )
    with pytest.raises(ExportError, match="'avsr'.*'vatt'"):
        read_export(path, kind="vatt")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExportError, match="unreadable"):
        read_export(path)
