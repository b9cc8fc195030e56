"""Property-based fuzzing of what users type and feed: config overrides, manifests, CLI arguments.

Every input either works or fails with one line (no traceback) that names the key, file or argument.
``FUZZ_EXAMPLES`` sets the number of cases per property (docs/results.md records a larger run).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import typing
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import pretrain
import train_avsr
from data.manifest import ManifestError, read_manifest
from data.schema import ConfigError
from tests.conftest import run_python
from train.config import parse_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted config key of a config dataclass."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


_scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3),
)


def _override(keys: list[str]) -> st.SearchStrategy[str]:
    raw = st.one_of(_scalars.map(lambda v: json.dumps(v) if v is not None else "null"), st.text(max_size=12))
    key = st.one_of(
        st.sampled_from(keys), st.sampled_from(keys).map(lambda k: k + "x"), st.text(min_size=1, max_size=8)
    )
    return st.tuples(key, raw).map(lambda kv: f"{kv[0]}={kv[1]}")


def _one_line_naming(msg: str, names: list[str]) -> None:
    assert "\n" not in msg.strip(), msg
    assert any(n in msg for n in names), (msg, names)


@pytest.mark.parametrize("launcher", [pretrain, train_avsr], ids=["pretrain", "train_avsr"])
def test_config_overrides_work_or_fail_in_one_line_naming_the_key(launcher):
    cls = pretrain.PretrainConfig if launcher is pretrain else train_avsr.TrainAvsrConfig
    keys = _keys(cls)
    tried = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.lists(_override(keys), min_size=1, max_size=3))
    def check(args: list[str]) -> None:
        try:
            cfg = parse_config(cls, args)
            launcher.check_config(cfg)
        except ConfigError as exc:
            tried["refused"] += 1
            keys_typed = [a.split("=", 1)[0].strip() for a in args]
            _one_line_naming(str(exc), [repr(a) for a in args] + [k for k in keys_typed if k])
            return
        tried["ok"] += 1

    check()
    assert tried["ok"] + tried["refused"] >= EXAMPLES // 2
    print(f"{launcher.__name__}: {tried}")


_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_entry = st.dictionaries(
    st.one_of(st.sampled_from(["media", "id", "start", "end", "captions", "labels"]), st.text(max_size=6)),
    _json_values,
    max_size=5,
)
_caption = st.one_of(
    st.text(max_size=10),
    st.fixed_dictionaries({"text": st.text(max_size=10)}, optional={"start": _scalars, "end": _scalars}),
)
_valid_ish = st.fixed_dictionaries(
    {"media": st.text(min_size=1, max_size=10)},
    optional={
        "id": st.text(max_size=6),
        "start": st.floats(-5, 50),
        "end": st.floats(-5, 50),
        "captions": st.lists(_caption, max_size=3),
        "labels": st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=2),
    },
)
_line = st.one_of(
    _valid_ish.map(lambda d: json.dumps(d).encode()),
    _entry.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.just(b'{"media": "a.mp4", "captions": [{"text": "x", "start": 2, "end": 1}]}'),
    st.just(b"\xff\xfe\x00bad"),
)


def test_manifests_parse_or_fail_in_one_line_naming_the_file(tmp_path):
    tried = {"ok": 0, "refused": 0}

    @FUZZ
    @given(st.lists(_line, min_size=0, max_size=3))
    def check(lines: list[bytes]) -> None:
        path = tmp_path / "m.jsonl"
        path.write_bytes(b"\n".join(lines))
        try:
            entries = read_manifest(path)
        except ManifestError as exc:
            tried["refused"] += 1
            _one_line_naming(str(exc), [str(path)])
            return
        tried["ok"] += 1
        assert all(isinstance(e.media, Path) for e in entries)

    check()
    print(f"manifests: {tried}")


def _typeable(arg: str) -> bool:
    """Whether a shell can pass ``arg`` to a process at all (no NUL byte, valid UTF-8)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in arg


@pytest.mark.slow
@pytest.mark.parametrize("script", ["pretrain.py", "train_avsr.py"])
def test_launchers_print_one_line_for_bad_overrides(script, tmp_path):
    """The launchers themselves, as a user runs them: a refused override is one line, no traceback."""
    cls = pretrain.PretrainConfig if script == "pretrain.py" else train_avsr.TrainAvsrConfig
    keys = _keys(cls)

    # Each case is a process of a few seconds: a failure is reported as found, not shrunk step by step.
    @settings(max_examples=max(3, EXAMPLES // 60), deadline=None, phases=[Phase.generate])
    @given(st.lists(_override(keys), min_size=1, max_size=2))
    def check(args: list[str]) -> None:
        assume(all(_typeable(a) for a in args))
        argv = [f"output_dir={tmp_path / 'run'}", *args]  # the case's own output_dir, if any, comes after
        try:
            cfg = parse_config(cls, argv)
            (pretrain if script == "pretrain.py" else train_avsr).check_config(cfg)
        except ConfigError:
            pass
        else:
            return  # a valid config would start a run: the in-process property covers these
        out = run_python([script, *argv], timeout=120)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        lines = [x for x in out.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"{script}: "), out.stderr[-2000:]
        assert not (tmp_path / "run").exists()

    check()


def _stderr_of(main, argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if isinstance(exc.code, str):
                err.write(exc.code + "\n")
            return code, err.getvalue()
    return 0, err.getvalue()
