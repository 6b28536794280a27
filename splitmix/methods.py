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

Modules are imported by name (``importlib``), never by an import statement, so no file below this
one depends on a method. Everything that needs a method's class lives here: building it for a
federation (``build_algorithm``; the engine receives the built algorithm), and its parameters in a
run config (``resolve_params`` fills in the declared defaults, ``check_params`` checks the values
against the class's declared types and ``param_rules``), so the config layer stays free of them.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any

from splitmix.config import InvalidValue, RunConfig, as_json, fail
from splitmix.data.clients import Federation
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import Algorithm, federation_info, registered

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


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered class ``name`` (``get_algorithm``), for code that asks what a method
    declares (its ``params``, ``param_rules``, ``one_run_per_width``)."""
    return get_algorithm(name)


def build_algorithm(cfg: RunConfig, fed: Federation) -> Algorithm:
    """The method of ``cfg``, told what it may know of ``fed`` (``FederationInfo``); its global
    model is not initialised yet (``init_global``)."""
    return get_algorithm(cfg.algorithm)(cfg, federation_info(cfg, fed))


# ---- a method's parameters in a run config ------------------------------------------------------
def resolve_params(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its method parameters over the algorithm's declared defaults, so that the
    config hash and run.json cover every parameter the run uses. An unknown algorithm or params
    that are not a mapping are left for ``check_params`` to refuse by name; applying it again
    changes nothing (a config read back from run.json resolves to the same hash)."""
    if not isinstance(cfg.method_params, dict):
        return cfg
    try:
        cls = get_algorithm(cfg.algorithm)
    except ConfigError:
        return cfg
    return dataclasses.replace(cfg, method_params=cls.resolved_params(cfg.method_params))


def _param_rule(default: Any) -> dict[str, Any]:
    """A parameter's schema from the type of its declared default (the algorithm's contract)."""
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, int | float):
        return {"type": "number"}
    return {}


def check_params(cfg: RunConfig, source: str = "") -> RunConfig:
    """``cfg`` if its method parameters are ones the algorithm declares, of the declared type and
    within its ``param_rules``; else one ``InvalidValue`` line naming the parameter (a bad
    budget, a negative weight, a depth the model does not have), before any job starts."""
    from splitmix.schemas import explain, first_error

    where = f"methods.{cfg.method}.params"
    cls = get_algorithm(cfg.algorithm)  # an unknown name: one line listing the registered ones
    declared = cls.params
    if not isinstance(cfg.method_params, dict):
        raise fail(source, where, f"{cfg.method_params!r} is not a mapping of parameters")
    unknown = sorted(set(cfg.method_params) - set(declared))
    if unknown:
        raise fail(
            source,
            where,
            f"unknown parameter(s) {', '.join(unknown)} for {cfg.algorithm}; allowed: "
            f"{', '.join(sorted(declared)) or 'none'}",
        )
    rules = {name: _param_rule(default) for name, default in declared.items()}
    rules.update(cls.param_rules)
    error = first_error(as_json(cfg.method_params), {"type": "object", "properties": rules})
    if error is not None:
        raise InvalidValue(explain(error, source, where))
    problem = cls.check_config(resolve_params(cfg))
    if problem:
        raise fail(source, where, problem)
    return cfg
