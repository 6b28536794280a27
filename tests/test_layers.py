"""The library's files form layers that import one way: no import circle between files, and no
file imports a file of a higher layer. Read from the source (every ``import`` statement, also
those inside functions), so a lazy import cannot hide an upward dependency.

The layers, lowest first (docs/design.md#layers): foundations (with the dataset catalog, a table
of facts); the run config; data and models;
the engine (``fl/``); the methods (Split-Mix's package and ``baselines/``); discovery
(``methods.py``); orchestration, evaluation and experiment grids; deployment; the report; the
cost estimate; the command line (every ``cli.py``, the package root).
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("splitmix", "baselines")
LAYERS: list[tuple[str, ...]] = [
    ("splitmix.errors", "splitmix.atomic", "splitmix.timefmt", "splitmix.seeding",
     "splitmix.allocator", "splitmix.version", "splitmix.runfolder", "splitmix.schemas",
     "splitmix.data.catalog"),
    ("splitmix.config",),
    ("splitmix.data", "splitmix.data.*", "splitmix.models", "splitmix.models.*"),
    ("splitmix.fl", "splitmix.fl.*"),
    ("splitmix.splitmix", "splitmix.splitmix.*", "baselines", "baselines.*"),
    ("splitmix.methods",),
    ("splitmix.training", "splitmix.experiment", "splitmix.evaluate", "splitmix.evaluate.*"),
    ("splitmix.deploy", "splitmix.deploy.*"),
    ("splitmix.report", "splitmix.report.*"),
    ("splitmix.estimate",),
    ("splitmix", "splitmix.cli", "splitmix.__main__", "*.cli"),
]  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def layer(module: str) -> int:
    """The layer that names ``module`` exactly, else the highest layer whose patterns match
    (``*.cli`` outranks its package's pattern)."""
    exact = [i for i, pats in enumerate(LAYERS) if module in pats]
    if exact:
        return exact[0]
    hits = [i for i, pats in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in pats)]
    assert hits, f"{module} is in no layer of tests/test_layers.py"
    return max(hits)


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the library modules it imports (``from a import b`` counts a.b if a module)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for n in names:
                target = resolve(n) if n.startswith(PACKAGES) else None
                if target and target != mod:
                    found.add(target)
        edges[mod] = found
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_library_files():
    assert circles(imports(modules())) == []


def test_no_file_imports_a_file_of_a_higher_layer():
    edges = imports(modules())
    upward = sorted(
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in edges.items()
        for b in targets
        if layer(b) > layer(a)
    )
    assert upward == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The two checks can fail: an import inside a function, and a relative one, are edges."""
    pkg = tmp_path / "splitmix"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from splitmix.methods import x\n")
    (pkg / "methods.py").write_text("from .config import f\n")
    me = sys.modules[__name__]
    monkeypatch.setattr(me, "ROOT", tmp_path)
    monkeypatch.setattr(me, "PACKAGES", ("splitmix",))
    edges = imports(modules())
    assert edges["splitmix.config"] == {"splitmix.methods"}
    assert edges["splitmix.methods"] == {"splitmix.config"}
    assert circles(edges) == [["splitmix.config", "splitmix.methods"]]
    assert layer("splitmix.config") < layer("splitmix.methods")
