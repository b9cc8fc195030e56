"""Package boundaries and the shared script interface."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'accelerate', 'faiss', 'av'}:
            raise ImportError(f'{name} is blocked for the model libraries')
sys.meta_path.insert(0, _Block())
import vatt, avsr
import importlib, pkgutil
for pkg in (vatt, avsr):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):
        importlib.import_module(mod.name)
print('ok', len(vatt.list_models()), len(avsr.list_models()))
"""


def test_model_libraries_import_without_launcher_stack():
    out = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_blocker_really_blocks():
    code = BLOCKER.replace("import vatt, avsr", "import av")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0 and "blocked" in out.stderr


@pytest.mark.parametrize("script", ["pretrain.py", "train_avsr.py"])
def test_scripts_share_top_level_keys_and_reject_bad_keys(script, tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, script, "bogus_key=1", f"output_dir={run}"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "'bogus_key'" in out.stderr and "max_steps" in out.stderr and "seed" in out.stderr
    assert not run.exists()  # nothing was done before the error


def test_every_config_file_starts_with_its_launch_command():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("#") and ("launch" in first or "python -m" in first), f
        yaml.safe_load(f.read_text())
