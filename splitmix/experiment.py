"""Experiment configs: one YAML file describing a grid of runs, resolved into ``RunConfig``s.

Layout of the file::

    data_root: data
    training: {...}                  # defaults for every run (any RunConfig field)
    datasets:
      NAME: {training: {...}, splits: {SPLIT: {SplitConfig fields}}}
    methods:
      NAME: {algorithm: REGISTERED_NAME, params: {...}, training: {...}}
    seeds: [1, 2, 3]
    runs:                            # what the workflow builds (and per-run overrides)
      - {dataset: D, split: S, methods: [M, ...], seeds: [1], training: {...}}

A run's config is the deep merge, later wins, of: built-in defaults <- ``training`` <- the
dataset's ``training`` <- the named split (as ``split_config``) <- the method's ``training`` <-
the ``training`` of the ``runs`` entries matching (dataset, split, method, seed). The split sits
below the method and run layers so that a method or run may adjust e.g.
``split_config.val_ratio``. A ``runs`` entry's own ``seeds`` replace the top-level list for the
runs it builds: costly reference runs that no claim needs a spread of can run one seed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from splitmix.config import RunConfig, run_config_from_dict, validate_run
from splitmix.errors import ConfigError
from splitmix.methods import check_params, resolve_params

# ``workflow``: Snakemake-only settings (report name, data policy, resources); ignored here so one
# file serves both the workflow and `python -m splitmix train --config`.
SECTIONS = ("data_root", "training", "datasets", "methods", "seeds", "runs", "workflow")
DATASET_KEYS = ("training", "splits")
METHOD_KEYS = ("algorithm", "params", "training")
RUN_KEYS = ("dataset", "split", "methods", "seeds", "training")
RESERVED = ("dataset", "split", "method", "algorithm", "seed", "method_params", "data_root")


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-2`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-2``), so ``lr: 1e-2`` would load as
    the string "1e-2" and fail far from the config file; YAML 1.2 (and every user) reads a float.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}: {value!r}")
    return value


def _check_keys(section: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; allowed: "
            f"{', '.join(allowed)}"
        )


def _check_training(training: dict[str, Any], where: str) -> None:
    bad = sorted(set(training) & set(RESERVED))
    if bad:
        raise ConfigError(
            f"{where} may not set {', '.join(map(repr, bad))}: those come from the dataset, split, "
            "method and seed of the run (and data_root from the top level)"
        )


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read and check the structure of an experiment YAML file (values are checked on resolve)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config {path} does not exist; pass --config FILE")
    try:
        exp = _yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"{path} is not valid YAML: {first}") from None
    exp = _mapping(exp, str(path))
    _check_keys(exp, SECTIONS, str(path))
    _check_training(_mapping(exp.get("training"), "training"), "training")
    for name, ds in _mapping(exp.get("datasets"), "datasets").items():
        ds = _mapping(ds, f"datasets.{name}")
        _check_keys(ds, DATASET_KEYS, f"datasets.{name}")
        _check_training(
            _mapping(ds.get("training"), f"datasets.{name}.training"), f"datasets.{name}.training"
        )
        for split, sc in _mapping(ds.get("splits"), f"datasets.{name}.splits").items():
            _mapping(sc, f"datasets.{name}.splits.{split}")
    for name, m in _mapping(exp.get("methods"), "methods").items():
        m = _mapping(m, f"methods.{name}")
        _check_keys(m, METHOD_KEYS, f"methods.{name}")
        if not m.get("algorithm"):
            raise ConfigError(f"methods.{name} needs 'algorithm: <registered name>'")
        _mapping(m.get("params"), f"methods.{name}.params")
        _check_training(
            _mapping(m.get("training"), f"methods.{name}.training"), f"methods.{name}.training"
        )
    runs = exp.get("runs") or []
    if not isinstance(runs, list):
        raise ConfigError("runs must be a list of {dataset, split, methods, training} entries")
    for i, run in enumerate(runs):
        run = _mapping(run, f"runs[{i}]")
        _check_keys(run, RUN_KEYS, f"runs[{i}]")
        _check_training(_mapping(run.get("training"), f"runs[{i}].training"), f"runs[{i}].training")
        _check_seeds(run.get("seeds", [1]), f"runs[{i}].seeds")
    _check_seeds(exp.get("seeds", [1]), "seeds")
    return exp


def _check_seeds(seeds: Any, where: str) -> None:
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where} must be a non-empty list of integers, got {seeds!r}")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings are merged key by key, not replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _pick(section: dict[str, Any], name: str, kind: str, hint: str) -> dict[str, Any]:
    if name not in section:
        available = ", ".join(sorted(map(str, section))) or "none"
        raise ConfigError(f"unknown {kind} {name!r}; available: {available}{hint}")
    return _mapping(section[name], f"{kind} {name}")


def _entry_seeds(exp: dict[str, Any], run: dict[str, Any]) -> list[int]:
    """The seeds a ``runs`` entry builds: its own ``seeds``, else the top-level list."""
    return [int(s) for s in run.get("seeds") or exp.get("seeds", [1])]


def _run_entries(
    exp: dict[str, Any], dataset: str, split: str, method: str, seed: int
) -> list[dict]:
    """``runs`` entries for (dataset, split) that list ``method`` (or list no methods) and build
    ``seed`` (an entry without its own ``seeds`` builds every top-level seed)."""
    return [
        r
        for r in exp.get("runs") or []
        if r.get("dataset") == dataset
        and r.get("split") == split
        and (not r.get("methods") or method in r["methods"])
        and (not r.get("seeds") or int(seed) in r["seeds"])
    ]


def resolve_run(
    exp: dict[str, Any],
    dataset: str,
    split: str,
    method: str,
    seed: int,
    *,
    sets: Sequence[str] = (),
    source: str = "",
    check_device: bool = True,
) -> RunConfig:
    """The validated ``RunConfig`` of one (dataset, split, method, seed) of experiment ``exp``.

    ``sets`` (``--set key=value`` items) are applied before validation so that an override can
    repair a value the file gets wrong for this machine (``device=cpu``). ``source`` names the
    origin of the values in error messages; ``check_device``: see ``splitmix.config.validate_run``.
    """
    datasets = _mapping(exp.get("datasets"), "datasets")
    methods = _mapping(exp.get("methods"), "methods")
    ds = _pick(datasets, dataset, "dataset", " (the datasets section of the config)")
    splits = _mapping(ds.get("splits"), f"datasets.{dataset}.splits")
    split_cfg = _pick(splits, split, "split", f" (datasets.{dataset}.splits)")
    m = _pick(methods, method, "method", " (the methods section of the config)")
    layers = [
        _mapping(exp.get("training"), "training"),
        _mapping(ds.get("training"), f"datasets.{dataset}.training"),
        {"split_config": dict(split_cfg)},
        _mapping(m.get("training"), f"methods.{method}.training"),
        *(
            _mapping(r.get("training"), "runs.training")
            for r in _run_entries(exp, dataset, split, method, seed)
        ),
    ]
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    merged.update(
        dataset=dataset,
        split=split,
        method=method,
        algorithm=m["algorithm"],
        method_params=dict(_mapping(m.get("params"), f"methods.{method}.params")),
        seed=int(seed),
    )
    if "data_root" in exp:
        merged["data_root"] = str(exp["data_root"])
    cfg = resolve_params(_with_sets(run_config_from_dict(merged), sets))
    validate_run(cfg, source=source, check_device=check_device)
    return check_params(cfg, source)


def iter_runs(exp: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """Every (dataset, split, method, seed) the ``runs`` section asks for, in file order."""
    out: list[tuple[str, str, str, int]] = []
    methods = list(_mapping(exp.get("methods"), "methods"))
    for run in exp.get("runs") or []:
        for method in run.get("methods") or methods:
            for seed in _entry_seeds(exp, run):
                key = (run["dataset"], run["split"], method, seed)
                if key not in out:
                    out.append(key)
    return out


def parse_set(item: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (["key", "sub"], value parsed as YAML: numbers, bools, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} must look like key=value (e.g. rounds=5, adv.lam=0.5)")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_sets(cfg: RunConfig, items: Sequence[str], source: str = "--set") -> RunConfig:
    """``cfg`` with ``--set key=value`` overrides applied (nested keys with dots), validated."""
    if not items:
        return cfg
    cfg = resolve_params(_with_sets(cfg, items))
    validate_run(cfg, source=source)
    return check_params(cfg, source)


def _with_sets(cfg: RunConfig, items: Sequence[str]) -> RunConfig:
    """``cfg`` with the overrides applied, not yet validated (values are checked as a whole)."""
    if not items:
        return cfg
    values = cfg.to_dict()
    for item in items:
        path, value = parse_set(item)
        override: dict[str, Any] = {path[-1]: value}
        for part in reversed(path[:-1]):
            override = {part: override}
        head = path[0]
        if len(path) > 1 and not isinstance(values.get(head), dict):
            raise ConfigError(f"--set {item!r}: {head!r} is not a nested section of the run config")
        values = deep_merge(values, override)
    return run_config_from_dict(values)
