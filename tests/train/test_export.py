import hashlib
import json

import pytest
import torch

from data.files import OutputPathError
from train import export
from train.export import ExportError, read_export, save_export


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


def tree_digest(root):
    """Every file under ``root`` (relative path -> sha256 of its bytes), folders included by name."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def small_export(path, **kw):
    args = dict(kind="vatt", model_name="m", overrides={}, state_dict={"w": torch.ones(2)}, preprocess={})
    return save_export(path, **{**args, **kw})


def test_save_refuses_a_folder_it_did_not_write_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("weights were written although the output path was refused")

    monkeypatch.setattr(export, "save_file", boom)  # the refusal comes before any work
    user = tmp_path / "photos"
    (user / "2024").mkdir(parents=True)
    (user / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (user / "2024" / "notes.txt").write_text("keep me")
    before = tree_digest(user)
    with pytest.raises(OutputPathError) as err:
        small_export(user)
    assert str(user) in str(err.value) and "\n" not in str(err.value)
    assert tree_digest(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no temporary sibling left behind
    # a file is not replaced by a folder either
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="existing file"):
        small_export(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"
    monkeypatch.undo()
    # its own earlier export is replaced whole
    first = small_export(tmp_path / "e", extra={"n": 1})
    (first / "stale.bin").write_bytes(b"from the first export")
    small_export(first, extra={"n": 2})
    assert read_export(first).extra == {"n": 2} and not (first / "stale.bin").exists()


def write_meta(path, text: str | bytes) -> None:
    (path / "export.json").write_bytes(text if isinstance(text, bytes) else text.encode())


def good_meta(path) -> dict:
    return json.loads((path / "export.json").read_text())


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: '{"kind": "vatt", ', "invalid JSON at line 1 column"),
        (lambda m: b'{"kind": "\xff\xfe"}', "not UTF-8 text (byte 10)"),
        (lambda m: "[1, 2]", "expected a JSON object, got a list"),
        (lambda m: {k: v for k, v in m.items() if k != "fingerprint"}, "missing key 'fingerprint'"),
        (lambda m: {**m, "model": {"overrides": {}}}, "missing key 'model.name'"),
        (lambda m: {**m, "model": "vatt_test"}, "'model' must be an object, got a string"),
        (lambda m: {**m, "model": {"name": 3, "overrides": {}}}, "'model.name' must be a string, got a number"),
        (lambda m: {**m, "model": {"name": "m", "overrides": []}}, "'model.overrides' must be an object, got a list"),
        (lambda m: {**m, "preprocess": None}, "'preprocess' must be an object, got null"),
        (lambda m: {**m, "fingerprint": True}, "'fingerprint' must be a string, got true/false"),
        (lambda m: {**m, "tokenizer": 5}, "'tokenizer' must be a string or null, got a number"),
        (lambda m: {**m, "extra": "x"}, "'extra' must be an object, got a string"),
        (lambda m: {**m, "kind": ""}, "must not be empty"),
        (lambda m: {**m, "tokenizer": "../tok.model"}, "must name a file inside the export folder, got '../tok.model'"),
        (lambda m: {**m, "tokenizer": "/etc/hostname"}, "must name a file inside the export folder"),
        (lambda m: {**m, "tokenizer": "gone.model"}, "tokenizer file 'gone.model' is missing"),
    ],
)
def test_malformed_export_json_is_one_line_naming_the_file(tmp_path, change, needle):
    path = small_export(tmp_path / "e")
    (tmp_path / "tok.model").write_bytes(b"outside the export")
    new = change(good_meta(path))
    write_meta(path, new if isinstance(new, (str, bytes)) else json.dumps(new))
    for read in (read_export, export.read_export_meta):
        with pytest.raises(ExportError) as err:
            read(path)
        msg = str(err.value)
        assert msg.startswith(f"{path / 'export.json'}: ") and needle in msg and "\n" not in msg, msg


def test_optional_fields_default_and_meta_reads_without_weights(tmp_path):
    path = small_export(tmp_path / "e", extra={"a": 1})
    meta = good_meta(path)
    del meta["tokenizer"], meta["extra"]  # written by every export, but not needed to load one
    write_meta(path, json.dumps(meta))
    ex = read_export(path)
    assert ex.tokenizer_path is None and ex.extra == {}
    (path / "model.safetensors").unlink()
    assert export.read_export_meta(path)["fingerprint"] == meta["fingerprint"]
    with pytest.raises(ExportError, match="has no model.safetensors"):
        read_export(path)
