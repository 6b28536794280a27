"""How each (dataset, domain) becomes a train/test ImageSet pair from raw files.

A recipe names the registry files it needs and a ``build`` function. Datasets have more than one
*source* (where the images come from); each source may have variants tried in order:

* digits ``fedbn``: FedBN's preprocessed Digits zip, the paper's exact data.
  digits ``raw``: FedBN's recipe (``utils/data_preprocess.py``) applied to official files: official
  train + test concatenated, stratified 80/20 with ``StratifiedShuffleSplit(0.2, random_state=0)``.
  USPS uses the libsvm pair (FedBN's input) and falls back to the ``usps.h5`` re-packing.
* domainnet ``fedbn``: the official site zips cut by FedBN's split lists (faithful);
  ``raw``: the same zips with the reader's documented seeded 70/30 split (not FedBN's).
* cifar10 ``pickles``: the official python pickles; ``jpeg``: the mirror's JPEG re-encoding.

Every fallback is logged and recorded in the prepared manifest, never silent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitmix.data.catalog import CIFAR10_CLASSES, check_domain, get_dataset
from splitmix.data.imageset import ImageSet
from splitmix.errors import DataError

# FedBN's split(): parts are images[int(743.8*k):int(743.8*(k+1))] for k < 10, a fixed length
# (the smallest domain's train size / 10), NOT len(train)/10; train beyond part 9 is never used.
FEDBN_PART_LEN = 743.8
FEDBN_PARTS = 10

SOURCES: dict[str, tuple[str, ...]] = {  # first = default when nothing says otherwise
    "digits": ("fedbn", "raw"),
    "domainnet": ("fedbn", "raw"),
    "cifar10": ("pickles", "jpeg"),
}
DEFAULT_SIZES = {"domainnet": 256}  # others: the catalog's image_size


@dataclass
class Built:
    """What a recipe produced: the two splits plus what the manifest must say about them."""

    train: ImageSet
    test: ImageSet
    steps: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


Files = dict[str, Path]  # registry relpath -> verified local path
BuildFn = Callable[[Files, int], Built]


@dataclass(frozen=True)
class Recipe:
    dataset: str
    domain: str
    source: str  # fedbn | raw | pickles | jpeg
    variant: str  # which files, e.g. "libsvm" or "h5" for digits/usps raw
    files: tuple[str, ...]  # registry relpaths
    build: BuildFn
    note: str = ""  # caveat recorded in the manifest (e.g. "JPEG re-encoded pixels")

    @property
    def label(self) -> str:
        return self.source if self.variant == self.source else f"{self.source} ({self.variant})"


# ----------------------------------------------------------------------------------- helpers
def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


def fedbn_raw_part_sizes(n_train: int) -> list[int]:
    """Sizes of FedBN's 10 train parts cut from a train set of ``n_train`` images."""
    bounds = [min(int(FEDBN_PART_LEN * k), n_train) for k in range(FEDBN_PARTS + 1)]
    return [bounds[k + 1] - bounds[k] for k in range(FEDBN_PARTS)]


def _fedbn_recipe_split(pool: ImageSet, size: int, what: str) -> Built:
    """FedBN's 80/20 stratified split, then resize (per-image, so order does not matter)."""
    from splitmix.data.sources.transform import fedbn_train_test_split, resize, take

    train, test = fedbn_train_test_split(pool)
    # FedBN's training data are only its 10 parts (the first ~7,438 images of train.pkl); the
    # rest of train.pkl is never loaded by its DigitsDataset, so it is not our training pool either.
    parts = fedbn_raw_part_sizes(len(train))
    train = take(train, np.arange(sum(parts)))
    return Built(
        resize(train, size),
        resize(test, size),
        [
            f"{what}; official train and test concatenated ({len(pool)} images)",
            "FedBN split: StratifiedShuffleSplit(n_splits=1, test_size=0.2, random_state=0)",
            f"train = FedBN's train_part0..9 (first {sum(parts)} of the 80% split)",
            f"resize to {size}x{size} (PIL bilinear), channels kept",
        ],
        {"train_parts": parts},
    )


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into ``dest`` atomically (temp dir + rename), once per zip content.

    A marker holding the zip's size and mtime makes a re-fetched (different) zip re-extract; a
    crash mid-extraction leaves only a hidden temp dir, never a half-filled ``dest``.
    """
    stat = zip_path.stat()
    stamp = f"{zip_path.name} {stat.st_size} {stat.st_mtime_ns}\n"
    marker = dest / ".extracted-from"
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)  # zipfile strips absolute paths and '..' components
        (tmp / ".extracted-from").write_text(stamp)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{zip_path}: cannot extract ({type(exc).__name__}: {exc}); "
            "delete it and fetch it again"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
    return dest


def _find_dir(root: Path, holds: str) -> Path | None:
    """The shallowest folder under ``root`` holding a file at relative path ``holds``."""
    hits = sorted(root.rglob(holds), key=lambda p: len(p.parts))
    return hits[0].parents[len(Path(holds).parts) - 1] if hits else None


# ------------------------------------------------------------------------------------- digits
_MNIST = (
    "mnist/train-images-idx3-ubyte.gz",
    "mnist/train-labels-idx1-ubyte.gz",
    "mnist/t10k-images-idx3-ubyte.gz",
    "mnist/t10k-labels-idx1-ubyte.gz",
)


def _digits_mnist(f: Files, size: int) -> Built:
    from splitmix.data.sources.mnist import read_mnist_idx

    pool = _concat(
        read_mnist_idx(f[_MNIST[0]], f[_MNIST[1]]), read_mnist_idx(f[_MNIST[2]], f[_MNIST[3]])
    )
    return _fedbn_recipe_split(pool, size, "MNIST IDX files")


def _mat_pair(train: str, test: str, what: str) -> BuildFn:
    def build(f: Files, size: int) -> Built:
        from splitmix.data.sources.svhn import read_digits_mat

        pool = _concat(read_digits_mat(f[train]), read_digits_mat(f[test]))
        return _fedbn_recipe_split(pool, size, what)

    return build


def _usps_libsvm(f: Files, size: int) -> Built:
    from splitmix.data.sources.usps import read_usps_libsvm

    pool = _concat(read_usps_libsvm(f["usps/usps.bz2"]), read_usps_libsvm(f["usps/usps.t.bz2"]))
    return _fedbn_recipe_split(pool, size, "USPS libsvm files, pixels (v+1)/2*255 truncated")


def _usps_h5(f: Files, size: int) -> Built:
    from splitmix.data.sources.usps import read_usps_h5

    p = f["usps/usps.h5"]
    pool = _concat(read_usps_h5(p, "train"), read_usps_h5(p, "test"))
    return _fedbn_recipe_split(pool, size, "USPS usps.h5 re-packing, pixels rint(v*255)")


def _mnist_m(f: Files, size: int) -> Built:
    from splitmix.data.sources.mnist_m import read_mnist_m

    p = f["mnist_m/mnist_m.tar.gz"]
    pool = _concat(read_mnist_m(p, "train"), read_mnist_m(p, "test"))
    return _fedbn_recipe_split(pool, size, "MNIST-M DANN tarball (PNG, label files)")


def _fedbn_digits(domain: str) -> BuildFn:
    def build(f: Files, size: int) -> Built:
        from splitmix.data.sources.fedbn import (
            FEDBN_DIGITS_FOLDERS,
            fedbn_part_sizes,
            read_fedbn_digits,
        )
        from splitmix.data.sources.transform import resize

        zpath = f["fedbn/digit_dataset.zip"]
        folder = FEDBN_DIGITS_FOLDERS[domain]
        root = extract_zip(zpath, zpath.with_suffix(""))
        ddir = _find_dir(root, f"{folder}/test.pkl")
        if ddir is None:
            raise DataError(
                f"{zpath}: has no {folder}/test.pkl; delete it and fetch FedBN's digit_dataset.zip"
            )
        ddir = ddir / folder
        return Built(
            resize(read_fedbn_digits(ddir, "train"), size),
            resize(read_fedbn_digits(ddir, "test"), size),
            [
                f"FedBN digit_dataset.zip {folder}: train_part0..9 concatenated in order, test.pkl",
                f"resize to {size}x{size} (PIL bilinear), channels kept",
            ],
            {"train_parts": fedbn_part_sizes(ddir)},
        )

    return build


def _digits(domain: str, source: str) -> list[Recipe]:
    if source == "fedbn":
        return [
            Recipe(
                "digits",
                domain,
                "fedbn",
                "fedbn",
                ("fedbn/digit_dataset.zip",),
                _fedbn_digits(domain),
            )
        ]
    raw: dict[str, list[Recipe]] = {
        "mnist": [Recipe("digits", "mnist", "raw", "idx", _MNIST, _digits_mnist)],
        "svhn": [
            Recipe(
                "digits",
                "svhn",
                "raw",
                "mat",
                ("svhn/train_32x32.mat", "svhn/test_32x32.mat"),
                _mat_pair("svhn/train_32x32.mat", "svhn/test_32x32.mat", "SVHN .mat files"),
            )
        ],
        "usps": [
            Recipe(
                "digits",
                "usps",
                "raw",
                "libsvm",
                ("usps/usps.bz2", "usps/usps.t.bz2"),
                _usps_libsvm,
            ),
            Recipe(
                "digits",
                "usps",
                "raw",
                "h5",
                ("usps/usps.h5",),
                _usps_h5,
                note="usps.h5 re-packing: pixels close to, not bit-equal with, FedBN's libsvm ones",
            ),
        ],
        "synth": [
            Recipe(
                "digits",
                "synth",
                "raw",
                "mat",
                ("synth/synth_train_32x32.mat", "synth/synth_test_32x32.mat"),
                _mat_pair(
                    "synth/synth_train_32x32.mat", "synth/synth_test_32x32.mat", "SynthDigits .mat"
                ),
            )
        ],
        "mnistm": [
            Recipe(
                "digits",
                "mnistm",
                "raw",
                "dann-tar",
                ("mnist_m/mnist_m.tar.gz",),
                _mnist_m,
                note="DANN PNG release; FedBN used mnistm_data.pkl (28x28) of the same images",
            )
        ],
    }
    return raw[domain]


# ---------------------------------------------------------------------------------- domainnet
_DN_SPLIT_ZIP = "domainnet/domainnet_dataset.zip"


def _domainnet(site: str, source: str) -> list[Recipe]:
    def build(f: Files, size: int) -> Built:
        from splitmix.data.sources.domainnet import read_domainnet

        root = f[f"domainnet/{site}.zip"].parent
        lists = None
        if source == "fedbn":
            zpath = f[_DN_SPLIT_ZIP]
            lists = _find_dir(extract_zip(zpath, zpath.with_suffix("")), f"{site}_train.pkl")
            if lists is None:
                raise DataError(f"{zpath}: has no {site}_train.pkl; delete it and fetch it again")
        how = "FedBN split lists" if lists else "seeded 70/30 per-class split (not FedBN's)"
        return Built(
            read_domainnet(root, site, "train", size=size, split_lists=lists),
            read_domainnet(root, site, "test", size=size, split_lists=lists),
            [
                f"DomainNet {site}.zip, 10 FedBN classes, {how}",
                f"non-3-band images to gray RGB, resize to {size}x{size} (PIL bilinear)",
            ],
        )

    files = (f"domainnet/{site}.zip",) + ((_DN_SPLIT_ZIP,) if source == "fedbn" else ())
    note = "" if source == "fedbn" else "seeded split, not FedBN's: compare only among such runs"
    return [Recipe("domainnet", site, source, source, files, build, note)]


# ------------------------------------------------------------------------------------ cifar10
def _cifar(source: str) -> list[Recipe]:
    if source == "pickles":

        def build(f: Files, size: int) -> Built:
            from splitmix.data.sources.cifar10 import read_cifar10_pickles
            from splitmix.data.sources.transform import resize

            p = f["cifar10/cifar-10-python.tar.gz"]
            return Built(
                resize(read_cifar10_pickles(p, "train"), size),
                resize(read_cifar10_pickles(p, "test"), size),
                ["CIFAR-10 python pickles, batches 1-5 in order / test_batch", f"size {size}"],
            )

        return [
            Recipe(
                "cifar10",
                "cifar10",
                "pickles",
                "pickles",
                ("cifar10/cifar-10-python.tar.gz",),
                build,
            )
        ]

    def build_jpeg(f: Files, size: int) -> Built:
        from splitmix.data.sources.image_tree import read_image_tree
        from splitmix.data.sources.transform import resize

        p = f["cifar10/cifar-10-images.tar.gz"]
        return Built(
            resize(read_image_tree(p, "train", CIFAR10_CLASSES), size),
            resize(read_image_tree(p, "test", CIFAR10_CLASSES), size),
            ["CIFAR-10 JPEG tree, ordered by (class, file name)", f"size {size}"],
        )

    return [
        Recipe(
            "cifar10",
            "cifar10",
            "jpeg",
            "jpeg",
            ("cifar10/cifar-10-images.tar.gz",),
            build_jpeg,
            note="JPEG variant: re-encoded pixels differ from the official CIFAR-10",
        )
    ]


# ------------------------------------------------------------------------------------- public
def check_source(dataset: str, source: str | None) -> None:
    allowed = SOURCES.get(dataset, ())
    if source is not None and source not in allowed:
        raise DataError(
            f"unknown source {source!r} for dataset {dataset!r}; "
            f"use one of: {', '.join(allowed) or '(none: it is bundled)'}"
        )


def default_size(dataset: str) -> int:
    return DEFAULT_SIZES.get(dataset, get_dataset(dataset).image_size)


def recipes(dataset: str, domain: str, source: str | None = None) -> list[Recipe]:
    """Candidate recipes in preference order (all sources unless ``source`` narrows them)."""
    spec = get_dataset(dataset)
    check_domain(dataset, domain)
    if spec.bundled:
        raise DataError(f"dataset {dataset!r} is bundled with the package; nothing to prepare")
    check_source(dataset, source)
    sources = (source,) if source else SOURCES[dataset]
    out: list[Recipe] = []
    for s in sources:
        if dataset == "digits":
            out += _digits(domain, s)
        elif dataset == "domainnet":
            out += _domainnet(domain, s)
        else:
            out += _cifar(s)
    return out
