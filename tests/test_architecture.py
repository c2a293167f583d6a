"""The structure drawn from pixelvit's imports: no import circle, no arrow running back up a layer.

The layers are the ones listed in the "Architecture" section of pixelvit/__init__.py's docstring; this test
reads them from there (without importing pixelvit), so the docstring and the code cannot drift apart.

The rule, as the test applies it to every file under pixelvit/ (read with `ast`, nothing imported):
* An arrow is any `import pixelvit.x` or `from pixelvit.x import y` (and relative imports), wherever it
  stands: at module level, inside a function, or under `if TYPE_CHECKING:`. A lazy import is legitimate to
  save start-up time, but it is still an arrow: it must point down (or stay in its layer) like any other.
* `from pixelvit.x import y` is an arrow to the module pixelvit.x.y when that is a module, else to pixelvit.x.
* Names handed to `importlib.import_module` as strings are not arrows: they are registrations of code above
  (pixelvit.tasks.TASKS names "pixelvit.dense.task", the package root's lazy public API names its modules).
* Every module belongs to exactly one layer, and every module the docstring lists exists.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pixelvit"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """'pixelvit.models.vit' -> its file, for every .py file of the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pixelvit modules `name` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"

    def owner(dotted: str) -> str | None:  # the module a dotted name lives in
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "pixelvit")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..models import y
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            if base.split(".")[0] != "pixelvit":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else owner(base))
    found.discard(None)
    found.discard(name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def declared_layers(init_file: Path = PACKAGE / "__init__.py") -> list[tuple[str, list[str]]]:
    """[(layer name, [module patterns, full names])] from the docstring's Architecture section, bottom first."""
    docstring = ast.get_docstring(ast.parse(init_file.read_text()))
    layers = []
    for number, title, entries in re.findall(r"^\s*(\d+)\. ([^:\n]+): (.+)$", docstring, re.MULTILINE):
        assert int(number) == len(layers) + 1, f"layer {number} ({title}) is out of order"
        patterns = [e.strip() for e in entries.split(",")]
        layers.append((title, ["pixelvit" if p == "__init__" else f"pixelvit.{p}" for p in patterns]))
    return layers


def layer_of(modules, layers) -> tuple[dict[str, int], list[str]]:
    """module -> index of its layer, and the problems: modules in no layer or in two, patterns matching nothing."""
    where, problems = {}, []
    for index, (title, patterns) in enumerate(layers):
        for pattern in patterns:
            matched = [m for m in modules if fnmatch.fnmatchcase(m, pattern)]
            if not matched:
                problems.append(f"layer {index + 1} ({title}) lists {pattern}, which does not exist")
            for module in matched:
                if module in where and where[module] != index:
                    problems.append(f"{module} is in layers {where[module] + 1} and {index + 1}")
                where[module] = index
    problems += [f"{m} is in no layer: add it to the Architecture list of pixelvit/__init__.py"
                 for m in sorted(modules) if m not in where]
    return where, problems


def upward_arrows(graph, where) -> list[str]:
    return [f"{a} (layer {where[a] + 1}) imports {b} (layer {where[b] + 1})"
            for a in sorted(graph) for b in sorted(graph[a]) if a in where and b in where and where[b] > where[a]]


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or one that imports itself."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------------------------
def test_no_import_circle_in_pixelvit():
    assert cycles(import_graph()) == []


def test_every_module_has_a_layer_and_no_arrow_runs_back_up():
    graph = import_graph()
    layers = declared_layers()
    assert len(layers) >= 5, "the Architecture section of pixelvit/__init__.py lists no layers"
    where, problems = layer_of(graph, layers)
    assert problems == []
    assert upward_arrows(graph, where) == []


def test_the_checker_sees_a_circle_and_an_upward_arrow(tmp_path):
    """A negative control: the same functions on a tiny package with one of each."""
    package = tmp_path / "pixelvit"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text('"""x\n\n    1. low: io\n    2. high: models, models.*\n    3. root: __init__\n"""\n')
    (package / "io.py").write_text("def f():\n    from pixelvit.models.base import g  # lazy, still an arrow\n")
    (package / "models" / "__init__.py").write_text("from . import base\n")
    (package / "models" / "base.py").write_text("from pixelvit import io\nfrom ..models import g\n")
    graph = import_graph(package)
    assert graph["pixelvit.io"] == {"pixelvit.models.base"} and "pixelvit.models" in graph["pixelvit.models.base"]
    assert cycles(graph) == [["pixelvit.io", "pixelvit.models", "pixelvit.models.base"]]
    where, problems = layer_of(graph, declared_layers(package / "__init__.py"))
    assert problems == []
    assert upward_arrows(graph, where) == ["pixelvit.io (layer 1) imports pixelvit.models.base (layer 2)"]


def test_pixelvit_io_loads_without_torch():
    """io.py takes the version from pixelvit._version, not the package root (which registers the models with
    timm and so loads torch; Python runs a package's __init__ before any of its modules, so the root is
    stubbed here to see what io.py itself needs)."""
    code = ("import sys, types; package = types.ModuleType('pixelvit'); package.__path__ = [sys.argv[1]]; "
            "sys.modules['pixelvit'] = package; import pixelvit.io; "
            "print(sorted(m for m in ('torch', 'timm', 'pixelvit.models') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(PACKAGE)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["pixelvit.pretrained", "pixelvit.train", "pixelvit.models.timm_registry"])
def test_the_names_that_moved_are_still_importable_where_they_were(name):
    """checkpoint reading moved to pixelvit.checkpoints, TrainConfig to pixelvit.config, the registry to
    pixelvit.models.registry; notebooks, assignments and tools import them from their old places."""
    import importlib

    module = importlib.import_module(name)
    expected = {
        "pixelvit.pretrained": ["read_checkpoint", "filter_state_dict", "load_into", "LoadReport", "CheckpointError",
                                "UnsafeCheckpointError", "load_state_dict_checked", "hub_reachable", "safe_globals"],
        "pixelvit.train": ["TrainConfig", "NOT_HASHED", "train", "check_config", "config_hash", "run_dir_of"],
        "pixelvit.models.timm_registry": ["TIMM_NAMES", "pretrained_tag", "create_pretrained", "model_cfg"],
    }[name]
    assert [n for n in expected if not hasattr(module, n)] == []
