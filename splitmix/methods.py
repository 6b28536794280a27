"""Method discovery: every federated method the suite can run, by name.

This sits above the engine, evaluation and report (which import no method) and below the CLI and
workflow. Methods come from three places, imported once on the first lookup:

* Split-Mix, ``splitmix.splitmix`` (its home inside the package);
* every module of the top-level ``baselines`` package (one file per baseline, each registering
  its classes with ``splitmix.fl.algorithm.register``);
* installed packages that declare an entry point in the group ``splitmix.methods``
  (``[project.entry-points."splitmix.methods"] mymethod = "mypkg.mymethod"``): the module named
  is imported, and registers its classes the same way, so a method can live outside this
  repository.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from splitmix.errors import ConfigError
from splitmix.fl.algorithm import Algorithm, registered

ENTRY_POINT_GROUP = "splitmix.methods"
_discovered = False


def _import_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party package must say which one it is
            raise ConfigError(
                f"method plug-in {ep.name!r} ({ep.value}) of entry-point group "
                f"{ENTRY_POINT_GROUP!r} failed to import: {type(exc).__name__}: {exc}; fix or "
                "uninstall that package"
            ) from None


def discover() -> None:
    """Import every method module once, so each registers its classes."""
    global _discovered
    if _discovered:
        return
    importlib.import_module("splitmix.splitmix")
    import baselines

    for mod in pkgutil.iter_modules(baselines.__path__):
        importlib.import_module(f"baselines.{mod.name}")
    _import_plugins()
    _discovered = True


def get_algorithm(name: str) -> type[Algorithm]:
    """The registered class called ``name`` (one-line ConfigError listing the known names)."""
    discover()
    found = registered().get(name)
    if found is None:
        raise ConfigError(
            f"unknown algorithm {name!r}; registered: {', '.join(available_algorithms())} "
            "(a new method is one file in baselines/ with @register, or an installed package "
            f"with a {ENTRY_POINT_GROUP!r} entry point)"
        )
    return found


def available_algorithms() -> list[str]:
    discover()
    return sorted(registered())
