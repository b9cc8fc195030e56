"""Package boundaries and the shared script interface."""

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_python

# The project's own code: packages (absent ones, e.g. before they are written, are skipped) and launchers.
PACKAGES = ("vatt", "avsr", "data", "eval", "train", "audiossl")
LAUNCHERS = ("pretrain", "pretrain_frontends", "train_avsr")

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
    out = run_python(["-c", BLOCKER])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_blocker_really_blocks():
    code = BLOCKER.replace("import vatt, avsr", "import av")
    out = run_python(["-c", code])
    assert out.returncode != 0 and "blocked" in out.stderr


@pytest.mark.parametrize("script", ["pretrain.py", "train_avsr.py"])
def test_scripts_share_top_level_keys_and_reject_bad_keys(script, tmp_path):
    run = tmp_path / "run"
    out = run_python([script, "bogus_key=1", f"output_dir={run}"])
    assert out.returncode != 0
    assert "'bogus_key'" in out.stderr and "max_steps" in out.stderr and "seed" in out.stderr
    assert not run.exists()  # nothing was done before the error


def test_every_config_file_starts_with_its_launch_command():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("#") and ("launch" in first or "python -m" in first), f
        yaml.safe_load(f.read_text())


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages and launchers found under ``root``."""
    modules = {}
    for package in PACKAGES:
        if (root / package / "__init__.py").is_file():
            for path in sorted((root / package).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for launcher in LAUNCHERS:
        if (root / f"{launcher}.py").is_file():
            modules[launcher] = root / f"{launcher}.py"
    return modules


def imported_names(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in the file, at module level or inside a function alike.

    ``from a import b`` yields ``a.b`` (a submodule, or a name the caller resolves back to ``a``);
    relative imports are made absolute against the module's package.
    """
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
    return names


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """Module -> {project module it imports: where (``file:line``)}; a name resolves to its longest
    prefix that is a project module (``from vatt import create_model`` -> ``vatt``)."""
    modules = project_modules(root)
    graph: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        graph[module] = {}
        for line, name in imported_names(module, path):
            parts = name.split(".")
            target = next(
                (".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None
            )
            if target is not None:
                graph[module].setdefault(target, f"{path.relative_to(root)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` (depth-first search), or None when the graph has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def describe_cycle(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def data_offenders(root: Path) -> list[str]:
    """Imports of ``accelerate`` or of the ``train`` package anywhere in ``data/`` (function level included)."""
    modules = project_modules(root)
    found = []
    for module, path in modules.items():
        if module.split(".")[0] == "data":
            for line, name in imported_names(module, path):
                if name.split(".")[0] in {"accelerate", "train"}:
                    found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


def test_no_import_cycles():
    graph = import_graph(ROOT)
    assert {"vatt", "avsr", "data", "eval", "pretrain", "train_avsr"} <= set(graph)
    assert "data.manifest" in graph["eval.embed"]  # the walk sees real imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + describe_cycle(graph, cycle)


def test_data_imports_no_training_infrastructure():
    offenders = data_offenders(ROOT)
    assert not offenders, "data/ holds data only:\n" + "\n".join(offenders)


def test_import_checks_catch_planted_violations(tmp_path):
    """The checks above can fail: a cycle through a function-level import, and data/ reaching for train/."""
    (tmp_path / "data").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "data" / "a.py").write_text("from data.b import f\n")
    (tmp_path / "data" / "b.py").write_text("def f():\n    from . import a\n    import accelerate\n")
    (tmp_path / "data" / "c.py").write_text("from train import loop\n")
    (tmp_path / "train" / "loop.py").write_text("from data.a import f\n")
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == ["data.a", "data.b", "data.a"]
    assert describe_cycle(graph, ["data.a", "data.b", "data.a"]) == (
        "data.a (data/a.py:1) -> data.b (data/b.py:2) -> data.a"
    )
    assert data_offenders(tmp_path) == ["data/b.py:3 imports accelerate", "data/c.py:1 imports train.loop"]
    (tmp_path / "data" / "b.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(tmp_path)) is None
