"""Run configuration: everything one training run (dataset, split, method, seed) depends on.

A ``RunConfig`` is built by merging, in order: built-in defaults, the experiment config's
``training`` section, the dataset's ``training`` overrides, then the method entry's overrides.
Unknown keys are a one-line ``ConfigError`` naming the key and the allowed ones. The config hash
recorded with every result is computed from the resolved ``RunConfig`` so that a result says exactly
what produced it.

Values are checked once, on the resolved run, by ``validate_run``: the value rules of the packaged
JSON schema plus what a schema cannot express (participation <= the number of clients, a device
this torch can use). The CLI and the workflow both call it (through
``splitmix.experiment.resolve_run``), so a value is refused the same way wherever it was set.

This module knows no method. A method's parameters (their defaults and value rules) are declared
on its class; the discovery layer above (``splitmix.methods``: ``resolve_params``,
``check_params``) fills in the defaults and checks the values, handing this layer plain data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from splitmix.errors import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """How a dataset is cut into clients (docs/paper.md#data, docs/fidelity.md#data-splits)."""

    kind: str = "feature"  # feature | iid | class | dirichlet
    clients_per_domain: int = 10  # pd_nuser (for single-domain datasets: the number of clients)
    percent: float = 1.0  # fraction of each domain's training data used
    val_ratio: float = 0.5  # fraction of each client's training share carved out for validation
    classes_per_client: int = 3  # kind=class
    alpha: float = 0.5  # kind=dirichlet
    equal_domain_sizes: bool = True  # truncate every domain to the smallest domain's train size
    # kind=class: test classes = train classes (docs/fidelity.md#class-test-data)
    test_same_classes: bool = True
    domains: tuple[str, ...] | None = None  # None = all domains of the dataset


def pgd_step_size(eps: float, steps: int) -> float:
    """The original's PGD step for ``steps`` iterations: ``min(1.25 eps, eps + 4/255) / steps``
    (docs/paper.md#adversarial; (10/255)/7 for the paper's eps 8/255 and 7 steps)."""
    return min(1.25 * eps, eps + 4 / 255) / max(int(steps), 1)


@dataclass(frozen=True)
class AdvConfig:
    """Adversarial training and robustness evaluation (docs/paper.md#adversarial)."""

    lam: float = 0.0  # training loss (1-lam)*CE(clean) + lam*CE(adversarial); 0 = no AT
    eps: float = 8 / 255
    steps: int = 7
    step_size: float | None = None  # None = pgd_step_size(eps, steps), the original's rule
    test_lams: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8, 1.0)  # dual-BN mixing at test

    def __post_init__(self) -> None:
        # resolved here so that the config hash and run.json record the step actually used; a
        # non-numeric eps or steps is left for validate_run to name rather than crash on here
        if self.step_size is None and _is_number(self.eps) and _is_number(self.steps):
            object.__setattr__(self, "step_size", pgd_step_size(self.eps, self.steps))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    split: str  # name of the split entry (a wildcard in results paths)
    method: str  # name of the method entry (a wildcard in results paths)
    algorithm: str  # registered Algorithm name, e.g. "splitmix", "heterofl", "fedavg"
    seed: int = 1
    data_root: str | None = None  # None = $SPLITMIX_DATA, else "data" (splitmix.data.store)
    split_config: SplitConfig = field(default_factory=SplitConfig)
    method_params: dict[str, Any] = field(
        default_factory=dict
    )  # algorithm-specific, validated by it
    arch: str | None = None  # None = the dataset's default model
    image_size: int | None = None  # None = the dataset's default input size
    bn: str = "batch"  # batch (no running stats) | tracked (server-averaged) | local (FedBN)
    budgets: str = "8-4-2-1"  # budget distribution string (docs/paper.md#budgets)
    budget_assignment: str = "index"  # index (paper) | random (seeded)
    rounds: int = 300
    local_epochs: int = 1  # wk_iters: local steps = engine.local_steps(n_train, batch_size, this)
    batch_size: int = 32
    test_batch_size: int = 128
    val_batch_size: int | None = None  # None = batch_size, as the original validates
    lr: float = 0.1
    lr_schedule: str = "cos"  # none | cos | multistep
    milestones: tuple[int, ...] = (150, 250)
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    participation: int = -1  # pr_nuser: clients sampled per round; -1 = all
    # None = on for class non-IID splits (docs/paper.md#federated-loop)
    masked_loss: bool | None = None
    augment: str | None = None  # None = dataset default; none | crop_flip | flip_rotate
    adv: AdvConfig = field(default_factory=AdvConfig)
    eval_every: int = 1
    checkpoint_every: int = 10
    threads: int = 2
    device: str = "cpu"
    # train a round's clients of one module shape as one vmapped batch (splitmix.fl.batched);
    # off = the sequential reference loop
    client_batching: bool = False

    @property
    def val_batch(self) -> int:
        """Batch size of validation (per-round selection, Split-Mix base sorting): the original
        validates with its training loader, and batch-statistics BN makes accuracy depend on it."""
        return self.batch_size if self.val_batch_size is None else self.val_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        values = self.to_dict()
        # Off, the field is left out: a run of the sequential reference keeps the hash it had
        # before the field existed (no finished result is retrained). On, it counts: batched
        # updates equal sequential ones to ~1e-6, not bit for bit, so a resume must not mix them.
        if not values["client_batching"]:
            del values["client_batching"]
        blob = json.dumps(values, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_NESTED = {"split_config": SplitConfig, "adv": AdvConfig}


def _numeric_kind(hint: Any) -> type | None:
    """float or int when the annotation ``hint`` is that number (or that number | None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((t for t in (float, int) if t in options), None)


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` in the exact numeric type of its field: ``lr: 1`` becomes 1.0 and ``rounds: 5.0``
    becomes 5, so that equal settings give equal config hashes. Anything else (a string, 2.5 for
    an integer) is left as it is for ``validate_run`` to refuse by name."""
    if typing.get_origin(hint) is tuple and isinstance(value, tuple | list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return value
    kind = _numeric_kind(hint)
    if not _is_number(value) or kind is None:
        return value
    if kind is float:
        return float(value)
    return int(value) if float(value).is_integer() else value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"unknown key {where}{key!r}; allowed keys: {', '.join(sorted(names))}"
            )
        if key in _NESTED and isinstance(value, dict):
            value = _build(_NESTED[key], value, f"{where}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = _coerce(value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required keys
        raise ConfigError(f"{where or 'run config'}: {exc}") from None


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a flat dict (nested dicts for split_config/adv), checking keys."""
    return _build(RunConfig, dict(values), "")


# ---- validation of a resolved run ---------------------------------------------------------------
class InvalidValue(ConfigError):
    """A value of a resolved run breaks a rule; the message is complete (it names its source)."""


def fail(source: str, where: str, message: str) -> InvalidValue:
    """The one-line error of a bad value at ``where`` (a key path) of config ``source``."""
    origin = f" in {source}" if source else ""
    return InvalidValue(f"config error{origin} at {where}: {message}")


def as_json(value: Any) -> Any:
    """``value`` with tuples as lists: JSON schema knows arrays only as lists."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [as_json(v) for v in value]
    return value


def _check_schema(cfg: RunConfig, source: str) -> None:
    """The schema's value rules for every field (``$defs/training``), the seed and data_root."""
    from splitmix.schemas import explain, first_error, load_schema

    schema = load_schema()
    values = as_json(cfg.to_dict())
    training = {k: values[k] for k in schema["$defs"]["training"]["properties"]}
    checks = [
        ("", training, {"$ref": "#/$defs/training"}),
        ("seed", cfg.seed, schema["properties"]["seeds"]["items"]),
    ]
    if cfg.data_root is not None:
        checks.append(("data_root", cfg.data_root, schema["properties"]["data_root"]))
    for prefix, instance, rule in checks:
        error = first_error(instance, rule)
        if error is not None:
            raise InvalidValue(explain(error, source, prefix))


def _check_federation(cfg: RunConfig, source: str) -> None:
    """Dataset, domains and participation: participation may not exceed the number of clients,
    clients_per_domain x the domains used (the same for every kind of split)."""
    from splitmix.data.catalog import DATASETS

    spec = DATASETS.get(cfg.dataset)
    if spec is None:
        raise fail(
            source,
            "dataset",
            f"{cfg.dataset!r} is not a known dataset; allowed: {', '.join(DATASETS)}",
        )
    domains = cfg.split_config.domains
    if domains is not None and not set(domains) <= set(spec.domains):
        raise fail(
            source,
            "split_config.domains",
            f"{list(domains)!r} names domains {cfg.dataset} does not have; allowed: a subset of "
            f"{', '.join(spec.domains)}",
        )
    n_domains = len(domains) if domains is not None else len(spec.domains)
    clients = cfg.split_config.clients_per_domain * n_domains
    if cfg.participation > clients:
        raise fail(
            source,
            "participation",
            f"{cfg.participation} is more than the {clients} clients of {cfg.dataset}/{cfg.split} "
            f"({cfg.split_config.clients_per_domain} per domain x {n_domains} domain(s)); "
            f"allowed: -1 (all) or 1 to {clients}",
        )


def device_problem(device: str) -> str | None:
    """Why this process cannot train on ``device``, or None when it can."""
    if device == "cpu":
        return None
    import torch

    kind, _, index = device.partition(":")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            return "this machine or torch build has no MPS backend"
        return None
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    count = torch.cuda.device_count()
    if count == 0:
        return "no CUDA device is visible here (torch.cuda.is_available() is False)"
    if index and int(index) >= count:
        return f"only {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
    return None


def validate_run(cfg: RunConfig, source: str = "", check_device: bool = True) -> RunConfig:
    """``cfg`` if every value is allowed, else an ``InvalidValue`` naming the key, the value and
    what is allowed (one line, prefixed ``config error in SOURCE at KEY``).

    Called before anything is written, so a refused run leaves no directory and no run.json.
    ``check_device=False`` skips only the question whether this machine can use ``cfg.device``:
    a workflow is parsed (and dry-run) where its jobs may not run, e.g. a login node without GPU;
    each job's own ``train`` checks it where it runs.
    """
    _check_schema(cfg, source)
    _check_federation(cfg, source)
    problem = device_problem(cfg.device) if check_device else None
    if problem:
        raise fail(
            source,
            "device",
            f"{cfg.device!r} cannot be used: {problem}; allowed: 'cpu' or a device this torch "
            "can use",
        )
    return cfg
