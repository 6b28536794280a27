"""Prepared cache: recipes on real mirror files and on tiny official-format fixtures."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from splitmix.data import registry, store
from splitmix.data.imageset import ImageSet
from splitmix.data.store import data_root, describe, load_domain, prepare, status
from splitmix.errors import DataError

from .fixtures import (
    write_cifar10_image_tree,
    write_cifar10_pickles_tar,
    write_domainnet_tree,
    write_fedbn_digits,
    write_svhn_mat,
)

# MNIST label histograms of the official train and t10k files (as the offline mirror's README lists them)
MNIST_TOTAL = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]) + np.array(
    [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPLITMIX_DATA_MIRROR", "SPLITMIX_DOWNLOAD_BASE", "SPLITMIX_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPLITMIX_OFFLINE", "1")  # nothing in here may touch the network


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Drop the registry checksums of ``relpaths`` so tiny fixture files stand in for them, and
    opt in to accepting (and pinning) such unverifiable files, as a user must."""
    monkeypatch.setenv("SPLITMIX_TRUST_FIRST_USE", "1")

    def drop(*relpaths: str) -> None:
        for rel in relpaths:
            entry = dataclasses.replace(registry.REGISTRY[rel], sha256=None, md5=None)
            monkeypatch.setitem(registry.REGISTRY, rel, entry)

    return drop


def pil_resize(images: ImageSet, size: int) -> np.ndarray:
    """Independent reference: PIL bilinear per image, as torchvision's Resize does on PIL."""
    out = []
    for img in images.images:
        im = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
        out.append(np.asarray(im.resize((size, size), Image.Resampling.BILINEAR)))
    arr = np.stack(out)
    return arr[..., None] if arr.ndim == 3 else arr


def fedbn_split(pool: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    sss = StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
    return next(sss.split(pool.images.reshape(len(pool), -1), pool.labels))


def concat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


def manifest(root: Path, dataset: str, domain: str, size: int) -> dict:
    return json.loads(
        (store.prepared_dir(dataset, domain, size, root) / "manifest.json").read_text()
    )


# ------------------------------------------------------------------------------- real mirror
def test_mnist_fedbn_recipe_on_real_files(mirror: Path, tmp_path: Path) -> None:
    assert status("digits", "mnist", root=tmp_path, mirror=mirror) == "in mirror"
    [out] = prepare("digits", "mnist", root=tmp_path, mirror=mirror, source="raw")
    train = load_domain("digits", "mnist", "train", root=tmp_path)
    test = load_domain("digits", "mnist", "test", root=tmp_path)
    assert isinstance(train.images, np.memmap)  # mapped, not read
    # FedBN's training pool is its 10 parts (7,438 images) of the 56,000-image 80% split
    assert train.images.shape == (7438, 28, 28, 1) and test.images.shape == (14000, 28, 28, 1)
    tr, te = np.array(train.class_counts()), np.array(test.class_counts())
    assert np.abs(te - 0.2 * MNIST_TOTAL).max() <= 1  # stratified: every class split 80/20
    assert np.abs(tr / 7438 - MNIST_TOTAL / MNIST_TOTAL.sum()).max() < 0.01  # shuffled, not sorted
    m = manifest(tmp_path, "digits", "mnist", 28)
    assert m["source"] == "raw" and m["splits"]["train"]["class_counts"] == tr.tolist()
    for f in m["source_files"]:
        assert f["sha256"] == registry.get_file(f["path"]).sha256
        assert f["verified_by"] == "registry sha256"
    # FedBN's split(): 10 parts of int(743.8 k) bounds, 7438 images in all
    assert sum(m["train_parts"]) == 7438 and m["train_parts"][:2] == [743, 744]
    assert status("digits", "mnist", root=tmp_path, mirror=mirror) == "prepared"
    stamp = (out / "manifest.json").stat().st_mtime_ns
    prepare("digits", "mnist", root=tmp_path, mirror=mirror)  # already prepared: untouched
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_usps_falls_back_to_h5_and_says_so(mirror: Path, tmp_path: Path) -> None:
    # the mirror has usps.t.bz2 and usps.h5 but not the libsvm train file usps.bz2
    prepare("digits", "usps", root=tmp_path, mirror=mirror, source="raw")
    m = manifest(tmp_path, "digits", "usps", 28)
    assert (m["source"], m["variant"]) == ("raw", "h5")
    assert any("not tried, needs usps/usps.bz2 " in line for line in m["fallback"])
    assert "not bit-equal" in m["note"]
    # FedBN's docstring for its USPS split: train (7438, 16, 16), test (1860, 16, 16)
    test = load_domain("digits", "usps", "test", root=tmp_path)
    assert m["splits"]["train"]["n"] == 7438 and len(test) == 1860
    assert test.images.shape[1:] == (28, 28, 1)  # gray stays one channel


# ---------------------------------------------------------------------------------- fixtures
def test_svhn_mat_raw_recipe(tmp_path: Path, trust: Callable[..., None]) -> None:
    trust("svhn/train_32x32.mat", "svhn/test_32x32.mat")
    raw = tmp_path / "raw"
    a = write_svhn_mat(raw / "svhn/train_32x32.mat", 40, seed=1)
    b = write_svhn_mat(raw / "svhn/test_32x32.mat", 10, seed=2)
    assert status("digits", "svhn", root=tmp_path) == "raw present"
    prepare("digits", "svhn", root=tmp_path, source="raw")
    pool = concat(a, b)
    tr_idx, te_idx = fedbn_split(pool)
    for split, idx in (("train", tr_idx), ("test", te_idx)):
        got = load_domain("digits", "svhn", split, root=tmp_path, mmap=False)
        np.testing.assert_array_equal(got.labels, pool.labels[idx])
        np.testing.assert_array_equal(
            got.images, pil_resize(ImageSet(pool.images[idx], pool.labels[idx]), 28)
        )
    m = manifest(tmp_path, "digits", "svhn", 28)
    assert [f["path"] for f in m["source_files"]] == ["svhn/train_32x32.mat", "svhn/test_32x32.mat"]
    assert all(len(f["sha256"]) == 64 for f in m["source_files"])  # trusted on first use


def test_cifar_pickles_preferred_and_exact(tmp_path: Path, trust: Callable[..., None]) -> None:
    trust("cifar10/cifar-10-python.tar.gz", "cifar10/cifar-10-images.tar.gz")
    raw = tmp_path / "raw"
    expected = write_cifar10_pickles_tar(raw / "cifar10/cifar-10-python.tar.gz", 10)
    write_cifar10_image_tree(raw / "cifar10/cifar-10-images.tar.gz", 1)
    prepare("cifar10", root=tmp_path)
    for split in ("train", "test"):
        got = load_domain("cifar10", "cifar10", split, root=tmp_path)
        np.testing.assert_array_equal(got.images, expected[split].images)
        np.testing.assert_array_equal(got.labels, expected[split].labels)
    assert manifest(tmp_path, "cifar10", "cifar10", 32)["source"] == "pickles"


def test_cifar_jpeg_fallback_recorded(tmp_path: Path, trust: Callable[..., None]) -> None:
    trust("cifar10/cifar-10-images.tar.gz")
    expected = write_cifar10_image_tree(tmp_path / "raw/cifar10/cifar-10-images.tar.gz", 2)
    prepare("cifar10", root=tmp_path)
    m = manifest(tmp_path, "cifar10", "cifar10", 32)
    assert m["source"] == "jpeg" and "JPEG variant" in m["note"]
    assert any("needs cifar10/cifar-10-python.tar.gz" in line for line in m["fallback"])
    got = load_domain("cifar10", "cifar10", "test", root=tmp_path)
    np.testing.assert_array_equal(got.images, expected["test"].images)
    assert m["splits"]["test"]["class_counts"] == [2] * 10


def _fedbn_zip(tmp_path: Path) -> dict[str, dict[str, ImageSet]]:
    src = tmp_path / "src/digit_dataset"
    sets = {d: write_fedbn_digits(src, d, seed=i) for i, d in enumerate(("SVHN", "USPS"))}
    zpath = tmp_path / "raw/fedbn/digit_dataset.zip"
    zpath.parent.mkdir(parents=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(src.rglob("*.pkl")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    return sets


def test_fedbn_shards_source(tmp_path: Path, trust: Callable[..., None]) -> None:
    trust("fedbn/digit_dataset.zip")
    sets = _fedbn_zip(tmp_path)
    prepare("digits", "svhn", root=tmp_path, source="fedbn")
    prepare("digits", "usps", root=tmp_path)  # default source: the FedBN zip is at hand
    for domain, folder in (("svhn", "SVHN"), ("usps", "USPS")):
        m = manifest(tmp_path, "digits", domain, 28)
        assert m["source"] == "fedbn" and m["train_parts"] == [3] * 10
        [src] = m["source_files"]  # the opt-in that let the unverifiable zip in is on record
        assert src["verified_by"].startswith(
            "first use, accepted with SPLITMIX_TRUST_FIRST_USE=1: a copy placed in the raw dir ("
        )
        for split in ("train", "test"):
            got = load_domain("digits", domain, split, root=tmp_path)
            np.testing.assert_array_equal(got.images, pil_resize(sets[folder][split], 28))
            np.testing.assert_array_equal(got.labels, sets[folder][split].labels)
    assert load_domain("digits", "usps", "test", root=tmp_path).images.shape == (4, 28, 28, 1)


def test_domainnet_split_lists_and_seeded_sources(
    tmp_path: Path, trust: Callable[..., None]
) -> None:
    trust("domainnet/sketch.zip", "domainnet/domainnet_dataset.zip")
    raw = tmp_path / "raw/domainnet"
    fx = write_domainnet_tree(raw, ["sketch"], as_zip=True, split_lists=tmp_path / "lists")
    with zipfile.ZipFile(raw / "domainnet_dataset.zip", "w") as zf:  # FedBN's zip: DomainNet/*.pkl
        for f in sorted((tmp_path / "lists").iterdir()):
            zf.write(f, f"DomainNet/{f.name}")
    prepare("domainnet", "sketch", root=tmp_path, size=16)
    m = manifest(tmp_path, "domainnet", "sketch", 16)
    assert m["source"] == "fedbn" and m["splits"]["train"]["shape"] == [10, 16, 16, 3]
    got = load_domain("domainnet", "sketch", "train", root=tmp_path, size=16)
    want = [fx.images[rel][0] for rel in fx.lists[("sketch", "train")]]  # the lists' order
    assert got.labels.tolist() == want
    first = fx.images[fx.lists[("sketch", "train")][0]][1]
    ref = np.asarray(Image.fromarray(first).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got.images[0], ref)
    # source raw: same zip, the reader's seeded split, and the manifest says it is not FedBN's
    prepare("domainnet", "sketch", root=tmp_path, size=16, source="raw")
    m = manifest(tmp_path, "domainnet", "sketch", 16)
    assert m["source"] == "raw" and "not FedBN's" in m["note"]
    assert m["splits"]["train"]["n"] + m["splits"]["test"]["n"] == 20


# -------------------------------------------------------------------------- failure and API
def test_interrupted_prepare_is_never_seen_as_prepared(
    tmp_path: Path, trust: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    trust("cifar10/cifar-10-python.tar.gz")
    write_cifar10_pickles_tar(tmp_path / "raw/cifar10/cifar-10-python.tar.gz", 10)
    prepare("cifar10", root=tmp_path)
    real_save, calls = store._save_npy, []

    def dying_save(path: Path, array: np.ndarray) -> None:
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(store, "_save_npy", dying_save)
    with pytest.raises(KeyboardInterrupt):
        prepare("cifar10", root=tmp_path, force=True)
    out = store.prepared_dir("cifar10", "cifar10", 32, tmp_path)
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert status("cifar10", "cifar10", root=tmp_path) == "raw present"
    with pytest.raises(DataError, match="is not prepared"):
        load_domain("cifar10", "cifar10", "train", root=tmp_path)


def test_not_prepared_message_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_domain("digits", "svhn", "train", root=tmp_path)
    msg = str(err.value)
    assert "`python -m splitmix data prepare digits --domain svhn`" in msg
    assert "SPLITMIX_DATA_MIRROR" in msg and "data fetch digits" in msg and "\n" not in msg
    with pytest.raises(DataError, match="--size 64"):
        load_domain("domainnet", "real", "test", root=tmp_path, size=64)


def test_unknown_names_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        load_domain("nope", "x", "train", root=tmp_path)
    with pytest.raises(DataError, match="unknown domain 'mars'"):
        prepare("digits", "mars", root=tmp_path)
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_domain("digits", "mnist", "val", root=tmp_path)
    with pytest.raises(DataError, match="unknown source 'jpeg' for dataset 'digits'"):
        prepare("digits", "mnist", root=tmp_path, source="jpeg")


def test_missing_everything_offline_names_file_checksum_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare("digits", "svhn", root=tmp_path, source="raw")
    msg = str(err.value)
    assert "svhn/train_32x32.mat: missing (expected md5 e26dedcc434d2e4c54c9b2d4a06d8373)" in msg
    assert "https://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg
    state, missing = describe("digits", "svhn", root=tmp_path)
    assert state == "missing" and "svhn/test_32x32.mat" in missing


def test_bundled_is_decoded_once_then_memory_mapped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import splitmix.data.bundle as bundle

    seen = []
    real = bundle.load_bundled
    monkeypatch.setattr(bundle, "load_bundled", lambda *a: seen.append(a) or real(*a))
    assert status("digits-mini", "usps", root=tmp_path) == "bundled"
    first = load_domain("digits-mini", "usps", "test", root=tmp_path)
    again = load_domain("digits-mini", "usps", "test", root=tmp_path)
    assert seen == [("digits-mini", "usps", "test")]  # decoded once, then read from the cache
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.labels, first.labels)
    # a marker for another payload (a rebuilt bundle) is not trusted: decode anew
    marker = next(tmp_path.rglob("test.cache.json"))
    marker.write_text(json.dumps(json.loads(marker.read_text()) | {"bundle_sha256": "0" * 64}))
    load_domain("digits-mini", "usps", "test", root=tmp_path)
    assert len(seen) == 2
    assert prepare("digits-mini", root=tmp_path) == []


def test_data_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data_root() == Path("data")
    monkeypatch.setenv("SPLITMIX_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
