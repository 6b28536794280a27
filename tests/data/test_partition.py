"""Invariants of the federated splits, checked on synthetic label arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from splitmix.config import SplitConfig
from splitmix.data.partition import ClientShard, client_weights, split_federation
from splitmix.errors import ConfigError

SEEDS = [0, 1, 7]


def _labels(n: int, seed: int, num_classes: int = 10, sort: bool = False) -> np.ndarray:
    y = np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int64)
    return np.sort(y) if sort else y


def _two_domains(seed: int = 123) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    # sorted by class, like image-folder stores: a contiguous split would be badly skewed
    train = {"a": _labels(1003, seed, sort=True), "b": _labels(1500, seed + 1)}
    test = {"a": _labels(301, seed + 2), "b": _labels(250, seed + 3, sort=True)}
    return train, test


def _check_pool(used: np.ndarray, y: np.ndarray, n: int) -> None:
    """The pool rule: n samples; per class its FIRST samples in stored order, in proportion."""
    assert len(used) == n and len(np.unique(used)) == n
    if n == len(y):
        return
    counts = np.bincount(y[used], minlength=10)
    full = np.bincount(y, minlength=10)
    assert np.all(np.abs(counts - full * n / len(y)) < 1)
    for c in range(10):
        assert np.array_equal(np.sort(used[y[used] == c]), np.flatnonzero(y == c)[: counts[c]])


def _check_disjoint_complete(
    shards: list[ClientShard],
    pool: dict[str, int],
    n_test: dict[str, int],
    y_train: dict[str, np.ndarray] | None = None,
) -> None:
    """Every used train sample appears exactly once (train or val), every test sample once."""
    for d in pool:
        mine = [s for s in shards if s.domain == d]
        tv = np.concatenate([np.concatenate([s.train, s.val]) for s in mine])
        if y_train is None:
            assert np.array_equal(np.sort(tv), np.arange(pool[d]))
        else:
            _check_pool(tv, y_train[d], pool[d])
        te = np.concatenate([s.test for s in mine])
        assert np.array_equal(np.sort(te), np.arange(n_test[d]))
    for s in shards:
        for arr in (s.train, s.val, s.test):
            assert arr.dtype == np.int64
            assert np.all(np.diff(arr) > 0)  # sorted, no repeats
        assert not set(s.train.tolist()) & set(s.val.tolist())


# ---------------------------------------------------------------------------------- iid / feature


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("equal", [True, False])
def test_iid_sizes_disjoint_complete(seed: int, equal: bool) -> None:
    train, test = _two_domains()
    cfg = SplitConfig(
        kind="feature", clients_per_domain=7, percent=0.6, val_ratio=0.3, equal_domain_sizes=equal
    )
    shards = split_federation(train, test, cfg, seed)
    assert [s.name for s in shards] == [f"a-{i}" for i in range(7)] + [f"b-{i}" for i in range(7)]
    n = {"a": int(1003 * 0.6), "b": int((1003 if equal else 1500) * 0.6)}
    _check_disjoint_complete(shards, n, {"a": 301, "b": 250}, train)
    for d in "ab":
        mine = [s for s in shards if s.domain == d]
        shares = np.array([len(s.train) + len(s.val) for s in mine])
        assert shares.sum() == n[d] and shares.max() - shares.min() <= 1
        assert shares.min() == n[d] // 7
        for s, share in zip(mine, shares, strict=True):
            assert len(s.val) == int(0.3 * share)
        tests = np.array([len(s.test) for s in mine])
        assert tests.max() - tests.min() <= 1
        assert all(s.classes is None for s in mine)


def test_pool_keeps_every_class_of_sorted_storage() -> None:
    # Domain "a" is stored sorted by class: a plain prefix of 60% would lose classes 6..9.
    train, test = _two_domains()
    cfg = SplitConfig(kind="class", clients_per_domain=5, percent=0.6, classes_per_client=2)
    shards = split_federation(train, test, cfg, 0)
    _check_disjoint_complete(shards, {"a": 601, "b": 601}, {"a": 301, "b": 250}, train)
    held = set().union(*(s.classes for s in shards if s.domain == "a"))
    assert held == set(range(10))
    a_labels = np.concatenate([train["a"][s.train] for s in shards if s.domain == "a"])
    assert set(a_labels.tolist()) == set(range(10))


def test_iid_shuffles_class_sorted_storage() -> None:
    # Domain "a" is stored sorted by class; our shuffled shares must each see most classes.
    train, test = _two_domains()
    shards = split_federation(train, test, SplitConfig(kind="iid", clients_per_domain=5), 3)
    for s in shards:
        assert len(np.unique(train[s.domain][s.train])) >= 9


def test_weights_from_train_sizes() -> None:
    train, test = _two_domains()
    shards = split_federation(train, test, SplitConfig(clients_per_domain=4, val_ratio=0.5), 0)
    w = client_weights(shards)
    n = np.array([len(s.train) for s in shards])
    assert np.isclose(w.sum(), 1.0)
    assert np.allclose(w * n.sum(), n)


# ---------------------------------------------------------------------------------- class non-IID


def _cifar_like() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    # balanced like CIFAR-10 but smaller (1,000 train and 100 test per class), stored unsorted
    # like the official files so that a percent prefix keeps every class
    r = np.random.default_rng(99)
    return {"c": r.permutation(np.repeat(np.arange(10), 1000))}, {
        "c": r.permutation(np.repeat(np.arange(10), 100))
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_class_noniid_holds_own_classes(seed: int) -> None:
    train, test = _cifar_like()
    cfg = SplitConfig(kind="class", clients_per_domain=20, classes_per_client=3, val_ratio=0.1)
    shards = split_federation(train, test, cfg, seed)
    _check_disjoint_complete(shards, {"c": 10_000}, {"c": 1000})
    y, yt = train["c"], test["c"]
    for s in shards:
        assert s.classes is not None and 1 <= len(s.classes) <= 3
        assert set(y[s.train]) <= set(s.classes)
        assert set(y[s.val]) <= set(s.classes)
        assert set(yt[s.test]) == set(s.classes)  # test classes = train classes by default
        assert len(s.val) == int(0.1 * (len(s.train) + len(s.val)))


@pytest.mark.parametrize("seed", SEEDS)
def test_class_noniid_shares_per_class_k100_c3(seed: int) -> None:
    # The paper's CIFAR setting: 100 clients x 3 classes = 300 shares = exactly 30 per class.
    train, test = {"c": np.repeat(np.arange(10), 600)}, {"c": np.repeat(np.arange(10), 100)}
    cfg = SplitConfig(kind="class", clients_per_domain=100, classes_per_client=3, val_ratio=0.1)
    shards = split_federation(train, test, cfg, seed)
    y = train["c"]
    per_class = np.zeros(10, dtype=int)
    for s in shards:
        labels = y[np.concatenate([s.train, s.val])]
        counts = np.bincount(labels, minlength=10)
        # a class drawn twice gives two shares: 20 samples per share (600 / 30)
        assert np.all(counts % 20 == 0)
        per_class += counts // 20
    assert per_class.tolist() == [30] * 10


def test_class_noniid_repeated_class_keeps_two_shares() -> None:
    # c = num_classes - 1 with many clients forces reshuffles inside draws; a client that draws
    # a class twice holds fewer distinct classes and two shares of the repeated one.
    train, test = {"c": np.repeat(np.arange(4), 640)}, {"c": np.repeat(np.arange(4), 40)}
    cfg = SplitConfig(kind="class", clients_per_domain=8, classes_per_client=3, val_ratio=0.0)
    for seed in range(20):
        shards = split_federation(train, test, cfg, seed)
        short = [s for s in shards if len(s.classes) < 3]
        if short:
            break
    else:
        pytest.fail("no repeated class in 20 seeds; the cyclic sampler should produce one")
    y = train["c"]
    shares = sum(len(s.classes) for s in shards)
    assert shares < 8 * 3
    # 24 draws over 4 classes = 6 shares of 640/6 per class; a doubled class gets ~2/6
    for s in short:
        counts = np.bincount(y[s.train], minlength=4)
        assert counts.max() >= 2 * (640 // 6)


def test_class_test_classes_fresh_when_not_same() -> None:
    train, test = _cifar_like()
    base = SplitConfig(kind="class", clients_per_domain=20, classes_per_client=3)
    same = split_federation(train, test, base, 5)
    fresh = split_federation(train, test, dataclasses.replace(base, test_same_classes=False), 5)
    yt = test["c"]
    # train side is identical; test classes are re-drawn for (almost) every client
    assert all(np.array_equal(a.train, b.train) for a, b in zip(same, fresh, strict=True))
    differ = sum(set(yt[b.test]) != set(b.classes) for b in fresh)
    assert differ >= 10
    _check_disjoint_complete(fresh, {"c": 10_000}, {"c": 1000})


def test_val_ratio_does_not_change_class_assignment() -> None:
    train, test = _cifar_like()
    a = SplitConfig(kind="class", clients_per_domain=20, classes_per_client=3, val_ratio=0.1)
    b = dataclasses.replace(a, val_ratio=0.5, percent=0.5)
    sa, sb = split_federation(train, test, a, 11), split_federation(train, test, b, 11)
    assert [s.classes for s in sa] == [s.classes for s in sb]


def test_class_min_share_error() -> None:
    train, test = {"c": np.repeat(np.arange(10), 40)}, {"c": np.repeat(np.arange(10), 40)}
    cfg = SplitConfig(kind="class", clients_per_domain=10, classes_per_client=3)
    with pytest.raises(ConfigError, match="class") as exc:
        split_federation(train, test, cfg, 0)  # 40 samples / 3 holders < 16
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------- dirichlet


def _mean_label_entropy(shards: list[ClientShard], y: np.ndarray) -> float:
    ents = []
    for s in shards:
        p = np.bincount(y[s.train], minlength=10) / len(s.train)
        p = p[p > 0]
        ents.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(ents))


@pytest.mark.parametrize("seed", SEEDS)
def test_dirichlet_skew_and_invariants(seed: int) -> None:
    train, test = _cifar_like()
    ents = {}
    for alpha in (0.1, 100.0):
        cfg = SplitConfig(kind="dirichlet", clients_per_domain=10, alpha=alpha, val_ratio=0.2)
        shards = split_federation(train, test, cfg, seed)
        _check_disjoint_complete(shards, {"c": 10_000}, {"c": 1000})
        assert all(len(s.train) > 0 and len(s.test) > 0 for s in shards)
        for s in shards:
            assert len(s.val) == int(0.2 * (len(s.train) + len(s.val)))
        ents[alpha] = _mean_label_entropy(shards, train["c"])
    assert ents[100.0] > np.log(10) - 0.05  # nearly uniform labels
    assert ents[0.1] < ents[100.0] - 0.5


def test_dirichlet_test_follows_train_proportions() -> None:
    train, test = _cifar_like()
    cfg = SplitConfig(kind="dirichlet", clients_per_domain=5, alpha=0.3, val_ratio=0.0)
    for s in split_federation(train, test, cfg, 2):
        p_train = np.bincount(train["c"][s.train], minlength=10) / 1000
        p_test = np.bincount(test["c"][s.test], minlength=10) / 100
        assert np.abs(p_train - p_test).max() <= 0.011  # same p, floor cuts: off by <= 1 sample


def test_dirichlet_impossible_raises() -> None:
    train, test = {"c": np.repeat(np.arange(10), 3)}, {"c": np.repeat(np.arange(10), 1)}
    cfg = SplitConfig(kind="dirichlet", clients_per_domain=25, alpha=0.01)
    with pytest.raises(ConfigError, match="alpha"):
        split_federation(train, test, cfg, 0)


# ---------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["feature", "class", "dirichlet"])
def test_determinism(kind: str) -> None:
    train, test = _cifar_like()
    cfg = SplitConfig(kind=kind, clients_per_domain=10, classes_per_client=2, alpha=0.5)
    a, b = split_federation(train, test, cfg, 4), split_federation(train, test, cfg, 4)
    c = split_federation(train, test, cfg, 5)
    for x, y in zip(a, b, strict=True):
        assert x.classes == y.classes
        for f in ("train", "val", "test"):
            assert np.array_equal(getattr(x, f), getattr(y, f))
    assert any(not np.array_equal(x.train, z.train) for x, z in zip(a, c, strict=True))


def test_domain_streams_independent() -> None:
    # Adding a domain never changes the split of another domain.
    train, test = _two_domains()
    cfg = SplitConfig(kind="feature", clients_per_domain=5, equal_domain_sizes=False)
    both = split_federation(train, test, cfg, 1)
    only_b = split_federation({"b": train["b"]}, {"b": test["b"]}, cfg, 1)
    for x, y in zip(both[5:], only_b, strict=True):
        assert x.name == y.name and np.array_equal(x.train, y.train)


def test_domains_subset() -> None:
    train, test = _two_domains()
    cfg = SplitConfig(kind="iid", clients_per_domain=3, domains=("b",))
    shards = split_federation(train, test, cfg, 0)
    assert [s.domain for s in shards] == ["b"] * 3


# ---------------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"clients_per_domain": 0}, "clients_per_domain"),
        ({"val_ratio": 1.0}, "val_ratio"),
        ({"val_ratio": -0.1}, "val_ratio"),
        ({"percent": 0.0}, "percent"),
        ({"percent": 1.5}, "percent"),
        ({"clients_per_domain": 2000}, "clients_per_domain"),
        ({"kind": "class", "classes_per_client": 11}, "classes_per_client"),
        ({"kind": "class", "classes_per_client": 0}, "classes_per_client"),
        ({"kind": "class", "classes_per_client": 1, "clients_per_domain": 5}, "classes_per_client"),
        ({"kind": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"kind": "pathological"}, "kind"),
        ({"domains": ("z",)}, "domains"),
    ],
)
def test_impossible_parameters(changes: dict, key: str) -> None:
    train, test = _two_domains()
    cfg = dataclasses.replace(SplitConfig(), **changes)
    with pytest.raises(ConfigError, match=key) as exc:
        split_federation(train, test, cfg, 0)
    assert "\n" not in str(exc.value)
