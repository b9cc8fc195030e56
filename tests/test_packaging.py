"""The wheel holds every package of the tree, both launchers and the console commands, and each command
names a function that exists."""

from __future__ import annotations

import configparser
import importlib
import shutil
import zipfile

import pytest

from tests.conftest import ROOT, run_python

LIBRARIES = ("vatt", "avsr", "data", "eval", "train", "audiossl")  # those that exist are packaged
LAUNCHERS = ("pretrain.py", "pretrain_frontends.py", "train_avsr.py")
SCRIPTS = {
    "vatt-pretrain": "pretrain:main",
    "vatt-train-avsr": "train_avsr:main",
    "vatt-retrieval": "eval.retrieval:main",
    "vatt-search": "eval.search:main",
    "vatt-curves": "eval.curves:main",
    "vatt-lrs2-eval": "eval.lrs2:main",
    "vatt-shapes": "data.synth.shapes:main",
    "vatt-speech": "data.synth.speech:main",
    "vatt-tokenizer": "data.tokenizer:main",
    "vatt-downstream": "eval.downstream.__main__:main",
}


def source_modules() -> list[str]:
    """Every ``.py`` file of every package folder (a folder with ``__init__.py``) of the libraries."""
    files = []
    for lib in LIBRARIES:
        for init in sorted((ROOT / lib).rglob("__init__.py")):
            parts = init.parent.relative_to(ROOT).parts
            # A folder is only a package when every folder above it, up to the library, is one too.
            if all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                files += [f.relative_to(ROOT).as_posix() for f in sorted(init.parent.glob("*.py"))]
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Built from a copy of the sources, so no build/ or egg-info lands in the working tree (and a stale
    build/lib cannot leak removed files into the wheel), without build isolation: no network needed."""
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, f"setuptools {setuptools.__version__} cannot read pyproject.toml's license; run make setup"
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *LAUNCHERS):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "corpora")
    for lib in LIBRARIES:
        if (ROOT / lib).is_dir():
            shutil.copytree(ROOT / lib, src / lib, ignore=ignore)
    for junk in ("tests", "bench"):  # present in a checkout; must stay out of the wheel
        (src / junk).mkdir()
        (src / junk / "__init__.py").write_text("")
    build = run_python(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)])
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (path,) = out.glob("vatt_avsr-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def test_every_package_and_launcher_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    expected = source_modules()
    # The packages the explicit list of old left out must be among those checked.
    for package in ("vatt/layers", "avsr/decoding", "avsr/frontends", "data/synth", "train"):
        assert f"{package}/__init__.py" in expected, package
    missing = [f for f in [*expected, *LAUNCHERS] if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench")]


def test_console_scripts_name_functions_that_exist(wheel):
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS
    for target in SCRIPTS.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_metadata_license_is_an_spdx_expression(wheel):
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in wheel.read(metadata).decode().splitlines()
