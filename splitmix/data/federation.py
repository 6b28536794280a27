"""Build the in-memory ``Federation`` of one run: load domains, split, assign budgets, to tensors.

This is the only place that joins the data layer's parts (store, partition, budgets) into what
the engine consumes, so the engine never sees file formats or index arrays. Every gather is one
vectorised fancy-index per client and subset; images stay uint8 (see ``clients.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from splitmix.config import RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.data.catalog import check_domain, get_dataset
from splitmix.data.clients import Client, Federation
from splitmix.data.imageset import ImageSet
from splitmix.data.partition import ClientShard, client_weights, split_federation
from splitmix.errors import ConfigError, DataError


def load_domain(dataset: str, domain: str, split: str, *, root: str, size: int) -> ImageSet:
    """Read one prepared domain split via ``splitmix.data.store``.

    Imported lazily so that summaries and partition tools work without the source readers, and
    so tests can replace this one function with synthetic data.
    """
    from splitmix.data.store import load_domain as store_load_domain

    return store_load_domain(dataset, domain, split, root=root, size=size)


def _domains(cfg: RunConfig) -> tuple[str, ...]:
    """``split_config.domains`` (in the order given) or every domain in the paper's order."""
    spec = get_dataset(cfg.dataset)
    chosen = cfg.split_config.domains
    if chosen is None:
        return spec.domains
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(
            f"split_config.domains={list(chosen)!r} must be a non-empty list without repeats, "
            f"from: {', '.join(spec.domains)}"
        )
    for d in chosen:
        check_domain(cfg.dataset, d)
    return tuple(chosen)


def _to_nchw3(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Gather ``images[idx]`` (uint8 NHWC) into a contiguous uint8 (n, 3, H, W) tensor."""
    x = torch.from_numpy(np.ascontiguousarray(images[idx])).permute(0, 3, 1, 2)
    if x.shape[1] == 1:  # gray domains (MNIST, USPS): repeat as in Grayscale(3) of the original
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise DataError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    return x.contiguous()


def _labels(labels: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(labels[idx], dtype=np.int64).copy())


def _bad_labels_fix(name: str, key: str, size: int) -> str:
    """The command that repairs a domain whose labels are out of range.

    A bundled dataset's cache heals itself (its labels are checked against a recorded sha256),
    so bad labels there come from the bundle; a prepared domain must be rebuilt with ``--force``
    because its manifest still says it is prepared.
    """
    domain = key.split("/")[0]
    if get_dataset(name).bundled:
        from splitmix.data.bundle import _REBUILD_HINT

        return f"the bundled data is damaged: {_REBUILD_HINT}"
    from splitmix.data.store import prepare_command

    return f"the prepared cache is corrupt; rebuild it with `{prepare_command(name, domain, size)}`"


def _check_domain_data(
    name: str, sets: dict[str, ImageSet], num_classes: int, size: int
) -> tuple[int, int]:
    """All domains must share the input size and have labels in 0..num_classes-1."""
    shapes = {(s.images.shape[1], s.images.shape[2]) for s in sets.values()}
    if len(shapes) != 1:
        raise DataError(
            f"{name}: domains have different image sizes {sorted(shapes)}; re-run "
            f"`python -m splitmix data prepare {name}` with one image_size"
        )
    for key, s in sets.items():
        if len(s) and (s.labels.min() < 0 or s.labels.max() >= num_classes):
            raise DataError(
                f"{name} {key}: labels outside 0..{num_classes - 1}; "
                + _bad_labels_fix(name, key, size)
            )
    return shapes.pop()


def _client(
    index: int, shard: ClientShard, train: ImageSet, test: ImageSet, budget: float, weight: float
) -> Client:
    return Client(
        index=index,
        name=shard.name,
        domain=shard.domain,
        train_x=_to_nchw3(train.images, shard.train),
        train_y=_labels(train.labels, shard.train),
        val_x=_to_nchw3(train.images, shard.val),
        val_y=_labels(train.labels, shard.val),
        test_x=_to_nchw3(test.images, shard.test),
        test_y=_labels(test.labels, shard.test),
        budget=float(budget),
        weight=float(weight),
        classes=shard.classes,
    )


def build_federation(cfg: RunConfig) -> Federation:
    """Load every domain of ``cfg.dataset``, split it per ``cfg.split_config``, assign budgets."""
    spec = get_dataset(cfg.dataset)
    size = cfg.image_size or spec.image_size
    domains = _domains(cfg)
    train = {
        d: load_domain(cfg.dataset, d, "train", root=cfg.data_root, size=size) for d in domains
    }
    test = {d: load_domain(cfg.dataset, d, "test", root=cfg.data_root, size=size) for d in domains}
    all_sets = {f"{d}/train": s for d, s in train.items()} | {
        f"{d}/test": s for d, s in test.items()
    }
    h, w = _check_domain_data(cfg.dataset, all_sets, spec.num_classes, size)
    shards = split_federation(
        {d: train[d].labels for d in domains},
        {d: test[d].labels for d in domains},
        cfg.split_config,
        cfg.seed,
        num_classes=spec.num_classes,
    )
    budgets = assign_budgets(cfg.budgets, len(shards), mode=cfg.budget_assignment, seed=cfg.seed)
    weights = client_weights(shards)
    clients = [
        _client(i, s, train[s.domain], test[s.domain], budgets[i], weights[i])
        for i, s in enumerate(shards)
    ]
    return Federation(
        dataset=cfg.dataset,
        split=cfg.split,
        domains=tuple(domains),
        num_classes=spec.num_classes,
        input_shape=(3, h, w),
        clients=clients,
    )


def federation_summary(fed: Federation) -> pd.DataFrame:
    """One row per client (name, domain, budget, weight, sizes, classes) for logs and checks."""
    rows = [
        {
            "name": c.name,
            "domain": c.domain,
            "budget": c.budget,
            "weight": c.weight,
            "n_train": int(c.train_y.numel()),
            "n_val": int(c.val_y.numel()),
            "n_test": int(c.test_y.numel()),
            "classes": None if c.classes is None else "-".join(map(str, c.classes)),
        }
        for c in fed.clients
    ]
    return pd.DataFrame(
        rows,
        columns=["name", "domain", "budget", "weight", "n_train", "n_val", "n_test", "classes"],
    )
