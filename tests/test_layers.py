"""The package's import structure, read with ``ast``: no import cycles, no import against the layer order
documented in ``medgen/__init__.py``, and function-local medgen imports only with a reason (at most 10)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import medgen
from medgen.models.registry import TASKS

PACKAGE = Path(medgen.__file__).resolve().parent
MAX_LOCAL_IMPORTS = 10


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by their ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(modules: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """Every import of a medgen module: (importer, imported module, line, inside a function)."""
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target.split(".")[0] == "medgen" and target != name:
                    found.append((name, target, node.lineno, id(node) in local))
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry) of a dotted module name, from ``medgen.LAYERS``."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0, "medgen"  # the package itself: only __version__ and LAYERS
    for index, entries in enumerate(medgen.LAYERS):
        if parts[1] in entries:
            return index, parts[1]
    raise AssertionError(f"{module} is in no layer of medgen.LAYERS: add it there (medgen/__init__.py)")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


MODULES = module_names()
IMPORTS = imports(MODULES)


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_import_cycles():
    edges: dict[str, set[str]] = {}
    for src, dst, _, _ in IMPORTS:
        edges.setdefault(src, set()).add(dst)
    assert cycles(edges) == []


def test_imports_follow_the_layer_order():
    wrong = []
    for src, dst, line, _ in IMPORTS:
        (i, unit_src), (j, unit_dst) = layer_of(src), layer_of(dst)
        if j > i or (j == i and unit_src != unit_dst and unit_dst != "medgen"):
            wrong.append(f"{MODULES[src].relative_to(PACKAGE.parent)}:{line}: {src} (layer {i}) imports {dst} (layer {j})")
    assert wrong == []


def test_function_local_imports_are_few_and_give_a_reason():
    local = [(src, dst, line) for src, dst, line, inside in IMPORTS if inside]
    assert len(local) <= MAX_LOCAL_IMPORTS, local
    for src, dst, line in local:
        text = MODULES[src].read_text().splitlines()[line - 1]
        assert "#" in text, f"{MODULES[src]}:{line}: a function-local import of {dst} needs a one-line reason"


@pytest.mark.parametrize("source, expected", [
    ("import medgen.io\nfrom medgen.data import datalist\n", ["medgen.io", "medgen.data.datalist"]),
    ("from medgen.models.run import load_run\nfrom medgen import runtime\n", ["medgen.models.run", "medgen.runtime"]),
    ("from . import volumes\nfrom ..io import load_image\n", ["medgen.data.volumes", "medgen.io"]),
])
def test_import_reader_resolves_modules(tmp_path, source, expected):
    pkg = tmp_path / "medgen"
    (pkg / "data").mkdir(parents=True)
    for rel in ("__init__.py", "io.py", "runtime.py", "data/__init__.py", "data/volumes.py", "data/datalist.py",
                "models/__init__.py", "models/run.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).touch()
    (pkg / "data" / "patches.py").write_text(source)
    found = [dst for src, dst, _, _ in imports(module_names(pkg)) if src == "medgen.data.patches"]
    assert found == expected


def test_checker_catches_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("medgen.io")[0] < layer_of("medgen.models.run")[0] < layer_of("medgen.engines.train")[0]
    assert layer_of("medgen.inference.translate")[0] < layer_of("medgen.evaluation.report")[0]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_registry_setups_are_training_setups(name):
    """Each task names its setup in medgen.engines (the registry itself never imports engines)."""
    module, function = TASKS[name].setup.split(":")
    assert module.startswith("medgen.engines.")
    assert callable(getattr(importlib.import_module(module), function))
    assert TASKS[name].config().task == name
