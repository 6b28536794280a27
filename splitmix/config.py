"""Run configuration: everything one training run (dataset, split, method, seed) depends on.

A ``RunConfig`` is built by merging, in order: built-in defaults, the experiment config's
``training`` section, the dataset's ``training`` overrides, then the method entry's overrides.
Unknown keys are a one-line ``ConfigError`` naming the key and the allowed ones. The config hash
recorded with every result is computed from the resolved ``RunConfig`` so that a result says exactly
what produced it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from splitmix.errors import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """How a dataset is cut into clients (REFERENCE 3, 10)."""

    kind: str = "feature"  # feature | iid | class | dirichlet
    clients_per_domain: int = 10  # pd_nuser (for single-domain datasets: the number of clients)
    percent: float = 1.0  # fraction of each domain's training data used
    val_ratio: float = 0.5  # fraction of each client's training share carved out for validation
    classes_per_client: int = 3  # kind=class
    alpha: float = 0.5  # kind=dirichlet
    equal_domain_sizes: bool = True  # truncate every domain to the smallest domain's train size
    test_same_classes: bool = True  # kind=class: test classes = train classes (REFERENCE 10)
    domains: tuple[str, ...] | None = None  # None = all domains of the dataset


def pgd_step_size(eps: float, steps: int) -> float:
    """The original's PGD step for ``steps`` iterations: ``min(1.25 eps, eps + 4/255) / steps``
    (REFERENCE 5; (10/255)/7 for the paper's eps 8/255 and 7 steps)."""
    return min(1.25 * eps, eps + 4 / 255) / max(int(steps), 1)


@dataclass(frozen=True)
class AdvConfig:
    """Adversarial training and robustness evaluation (REFERENCE 5)."""

    lam: float = 0.0  # training loss (1-lam)*CE(clean) + lam*CE(adversarial); 0 = no AT
    eps: float = 8 / 255
    steps: int = 7
    step_size: float | None = None  # None = pgd_step_size(eps, steps), the original's rule
    test_lams: tuple[float, ...] = (0.0, 0.2, 0.5, 0.8, 1.0)  # dual-BN mixing at test

    def __post_init__(self) -> None:
        # resolved here so that the config hash and run.json record the step actually used
        if self.step_size is None:
            object.__setattr__(self, "step_size", pgd_step_size(self.eps, self.steps))


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
    budgets: str = "8-4-2-1"  # budget distribution string (REFERENCE 4)
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
    masked_loss: bool | None = None  # None = on for class non-IID splits (REFERENCE 1.0)
    augment: str | None = None  # None = dataset default; none | crop_flip | flip_rotate
    adv: AdvConfig = field(default_factory=AdvConfig)
    eval_every: int = 1
    checkpoint_every: int = 10
    threads: int = 2
    device: str = "cpu"

    @property
    def val_batch(self) -> int:
        """Batch size of validation (per-round selection, Split-Mix base sorting): the original
        validates with its training loader, and batch-statistics BN makes accuracy depend on it."""
        return self.batch_size if self.val_batch_size is None else self.val_batch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_NESTED = {"split_config": SplitConfig, "adv": AdvConfig}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
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
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required keys
        raise ConfigError(f"{where or 'run config'}: {exc}") from None


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a flat dict (nested dicts for split_config/adv), checking keys."""
    return _build(RunConfig, dict(values), "")
