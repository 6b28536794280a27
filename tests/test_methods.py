"""Method discovery (``splitmix.methods``): the packaged methods, third-party plug-ins through
the entry-point group, and the layering rule that generic code imports no method."""

from __future__ import annotations

import ast
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import splitmix.methods as methods
from splitmix.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GENERIC = ("splitmix/fl", "splitmix/evaluate", "splitmix/report", "splitmix/models")


def test_packaged_methods_are_found():
    names = methods.available_algorithms()
    for name in ("fedavg", "heterofl", "sheterofl", "splitmix"):
        assert name in names
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'.*registered: "):
        methods.get_algorithm("nope")


def test_an_installed_plugin_registers_through_the_entry_point_group(tmp_path, monkeypatch):
    """A package outside this repository adds a method by declaring an entry point; nothing in
    the repository is edited."""
    (tmp_path / "my_plugin_method.py").write_text(
        textwrap.dedent(
            """
            from baselines.fedavg import FedAvg
            from splitmix.fl.algorithm import register

            @register
            class PluginAvg(FedAvg):
                name = "plugin_avg_for_test"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint("plugin_avg", "my_plugin_method", methods.ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods, "entry_points", lambda group: [ep] if group == ep.group else [])
    monkeypatch.setattr(methods, "_discovered", False)
    try:
        assert methods.get_algorithm("plugin_avg_for_test").__name__ == "PluginAvg"
    finally:
        sys.modules.pop("my_plugin_method", None)
        from splitmix.fl import algorithm

        algorithm._REGISTRY.pop("plugin_avg_for_test", None)


def test_a_broken_plugin_is_one_line_naming_it(monkeypatch):
    ep = EntryPoint("broken", "no_such_module_anywhere", methods.ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods, "entry_points", lambda group: [ep])
    monkeypatch.setattr(methods, "_discovered", False)
    with pytest.raises(ConfigError, match="plug-in 'broken'.*failed to import"):
        methods.discover()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("folder", GENERIC)
def test_generic_code_imports_no_method_module(folder):
    """The engine, evaluation, report and models know no method: none of their modules imports
    ``baselines`` or Split-Mix's package (discovery is ``splitmix.methods``, above them)."""
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for mod in _imports(path):
            if mod == "baselines" or mod.startswith(("baselines.", "splitmix.splitmix")):
                offenders.append(f"{path.relative_to(ROOT)}: {mod}")
    assert offenders == []
