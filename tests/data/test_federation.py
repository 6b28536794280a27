"""build_federation joins loading, splitting, budgets and tensor conversion correctly."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from splitmix.config import RunConfig, SplitConfig
from splitmix.data import federation
from splitmix.data.budgets import assign_budgets
from splitmix.data.imageset import ImageSet
from splitmix.data.partition import split_federation
from splitmix.errors import DataError

SIZES = {("mnist", "train"): 700, ("mnist", "test"): 130, ("mnistm", "train"): 900,
         ("mnistm", "test"): 150}  # fmt: skip


def _fake_set(domain: str, split: str, size: int) -> ImageSet:
    """Pixels encode (sample index, channel) so every gathered image can be traced back."""
    n = SIZES[(domain, split)]
    channels = 1 if domain == "mnist" else 3
    img = np.zeros((n, size, size, channels), dtype=np.uint8)
    idx = np.arange(n)
    img[:, 0, 0, :] = (idx % 256)[:, None]
    img[:, 0, 1, :] = (idx // 256)[:, None]
    img[:, 1, 0, :] = np.arange(channels) * 50  # RGB channels differ, gray has one
    labels = np.random.default_rng(len(domain) + len(split)).permutation(np.arange(n) % 10)
    return ImageSet(img, labels.astype(np.int64))


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def load(dataset: str, domain: str, split: str, *, root: str, size: int) -> ImageSet:
        calls.append((dataset, domain, split, root, size))
        return _fake_set(domain, split, size)

    monkeypatch.setattr(federation, "load_domain", load)
    return calls


def _cfg(**split: object) -> RunConfig:
    sc = {"clients_per_domain": 4, "val_ratio": 0.3, "domains": ("mnist", "mnistm")} | split
    return RunConfig(
        dataset="digits",
        split="test",
        method="m",
        algorithm="fedavg",
        seed=3,
        data_root="/nowhere",
        split_config=SplitConfig(**sc),
        budgets="8-4-2-1",
    )


def _decode(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).numpy()


@pytest.mark.parametrize("kind", ["feature", "class"])
def test_build_federation_gathers_the_split(fake_store: list[tuple], kind: str) -> None:
    cfg = _cfg(kind=kind, classes_per_client=3, percent=0.8)
    fed = federation.build_federation(cfg)
    assert {c[:3] for c in fake_store} == {
        ("digits", d, s) for d in ("mnist", "mnistm") for s in ("train", "test")
    }
    assert all(c[3] == "/nowhere" and c[4] == 28 for c in fake_store)
    assert fed.domains == ("mnist", "mnistm") and fed.input_shape == (3, 28, 28)
    assert fed.num_classes == 10 and fed.dataset == "digits" and fed.split == "test"

    sets = {(d, s): _fake_set(d, s, 28) for d, s in SIZES}
    shards = split_federation(
        {d: sets[(d, "train")].labels for d in fed.domains},
        {d: sets[(d, "test")].labels for d in fed.domains},
        cfg.split_config,
        cfg.seed,
        num_classes=10,
    )
    assert [c.name for c in fed.clients] == [s.name for s in shards]
    assert [c.index for c in fed.clients] == list(range(8))
    for c, s in zip(fed.clients, shards, strict=True):
        for part, split, idx in (("train", "train", s.train), ("val", "train", s.val),
                                 ("test", "test", s.test)):  # fmt: skip
            x, y = getattr(c, f"{part}_x"), getattr(c, f"{part}_y")
            assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape[1:] == (3, 28, 28)
            assert y.dtype == torch.int64
            assert np.array_equal(_decode(x), idx)
            assert np.array_equal(y.numpy(), sets[(c.domain, split)].labels[idx])
        expected_rgb = [0, 0, 0] if c.domain == "mnist" else [0, 50, 100]  # gray repeated
        assert c.train_x[:, :, 1, 0].tolist() == [expected_rgb] * len(s.train)
        assert c.classes == s.classes
    n = np.array([len(s.train) for s in shards])
    assert np.allclose(fed.weights, n / n.sum())
    assert np.array_equal(fed.budgets, assign_budgets("8-4-2-1", 8))


def test_summary(fake_store: list[tuple]) -> None:
    fed = federation.build_federation(_cfg(kind="class", classes_per_client=3))
    df = federation.federation_summary(fed)
    assert list(df.columns) == [
        "name", "domain", "budget", "weight", "n_train", "n_val", "n_test", "classes"
    ]  # fmt: skip
    assert len(df) == 8 and df["name"].tolist()[0] == "mnist-0"
    assert df["n_train"].tolist() == [len(c.train_y) for c in fed.clients]
    assert np.isclose(df["weight"].sum(), 1.0)
    assert np.allclose(df["weight"], df["n_train"] / df["n_train"].sum())
    # the whole test set of each domain is divided among its clients
    assert df.groupby("domain")["n_test"].sum().to_dict() == {"mnist": 130, "mnistm": 150}
    first = fed.clients[0]
    assert df["classes"][0] == "-".join(map(str, first.classes))


def test_random_budgets_follow_seed(fake_store: list[tuple]) -> None:
    import dataclasses

    cfg = dataclasses.replace(_cfg(), budget_assignment="random")
    fed = federation.build_federation(cfg)
    assert np.array_equal(fed.budgets, assign_budgets("8-4-2-1", 8, mode="random", seed=3))


def test_domain_order_and_unknown_domain(fake_store: list[tuple]) -> None:
    fed = federation.build_federation(_cfg(domains=("mnistm", "mnist")))
    assert fed.domains == ("mnistm", "mnist")
    assert fed.clients[0].name == "mnistm-0" and fed.clients[-1].name == "mnist-3"
    with pytest.raises(DataError, match="'svhnx'"):
        federation.build_federation(_cfg(domains=("svhnx",)))


def test_mismatched_sizes_and_bad_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_size(dataset: str, domain: str, split: str, *, root: str, size: int) -> ImageSet:
        return _fake_set(domain, split, 28 if domain == "mnist" else 32)

    monkeypatch.setattr(federation, "load_domain", bad_size)
    with pytest.raises(DataError, match="different image sizes"):
        federation.build_federation(_cfg())

    def bad_labels(dataset: str, domain: str, split: str, *, root: str, size: int) -> ImageSet:
        s = _fake_set(domain, split, size)
        return ImageSet(s.images, s.labels + 5)

    monkeypatch.setattr(federation, "load_domain", bad_labels)
    with pytest.raises(DataError, match="labels outside"):
        federation.build_federation(_cfg())


def _bundle_missing() -> str | None:
    if importlib.util.find_spec("splitmix.data.store") is None:
        return "splitmix.data.store is not written yet"
    from splitmix.data.bundle import BUNDLE_DIR

    if not (BUNDLE_DIR / "digits-mini" / "provenance.json").is_file():
        return "digits-mini bundle not built (python -m splitmix data bundle --from MIRROR)"
    return None


@pytest.mark.skipif(_bundle_missing() is not None, reason=str(_bundle_missing()))
def test_digits_mini_integration(tmp_path: object) -> None:
    cfg = RunConfig(
        dataset="digits-mini",
        split="feature",
        method="m",
        algorithm="fedavg",
        data_root=str(tmp_path),
        split_config=SplitConfig(clients_per_domain=5, val_ratio=0.5),
    )
    fed = federation.build_federation(cfg)
    assert fed.domains == ("mnist", "usps", "mnistm") and fed.input_shape == (3, 28, 28)
    assert len(fed.clients) == 15
    assert np.array_equal(fed.budgets, assign_budgets("8-4-2-1", 15))
    assert np.isclose(fed.weights.sum(), 1.0)
    for c in fed.clients:
        assert c.train_x.shape[1:] == (3, 28, 28) and c.train_x.dtype == torch.uint8
        assert len(c.train_y) > 0 and len(c.val_y) > 0 and len(c.test_y) > 0
        assert set(c.train_y.tolist()) <= set(range(10))
        if c.domain in ("mnist", "usps"):  # gray: the three channels are copies
            assert torch.equal(c.train_x[:, 0], c.train_x[:, 2])
    df = federation.federation_summary(fed)
    assert df.groupby("domain")["n_train"].sum().nunique() == 1  # equal domain sizes
