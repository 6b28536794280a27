"""FedBN's preprocessed Digits (the files Split-Mix trains on) and FedBN's recipe for making them.

Layout, per domain folder (``MNIST``, ``SVHN``, ``USPS``, ``SynthDigits``, ``MNIST_M``)::

    <Domain>/partitions/train_part0.pkl ... train_part9.pkl     consecutive 10% shards of train
    <Domain>/test.pkl

Each file is a pickled ``(images, labels)`` tuple, read as FedBN reads it,
``np.load(path, allow_pickle=True)``, but through a restricted unpickler that rebuilds only numpy
arrays and plain data (``safe_pickle``: the zip comes from Google Drive); images are (N, H, W)
uint8 for gray domains or (N, H, W, 3), at each domain's native size (USPS 16x16, MNIST 28x28,
SVHN/SynthDigits 32x32x3, MNIST_M 28x28x3).

The recipe (FedBN ``utils/data_preprocess.py``): concatenate official train + test, split with
``StratifiedShuffleSplit(test_size=0.2, random_state=0)`` (``transform.fedbn_train_test_split``),
then cut train into 10 consecutive parts of ``len(train) // 10`` images (the remainder is dropped),
which :func:`fedbn_cut_parts` reproduces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    CORRUPT_ERRORS,
    PathLike,
    check_split,
    data_error,
    image_set,
    labels_from,
    require_file,
)
from splitmix.data.sources.safe_pickle import load_pickled

# catalog domain name -> FedBN folder name
FEDBN_DIGITS_FOLDERS = {
    "mnist": "MNIST",
    "svhn": "SVHN",
    "usps": "USPS",
    "synth": "SynthDigits",
    "mnistm": "MNIST_M",
}
FEDBN_PARTS = 10
_FIX = "use the pickles from FedBN's Digits zip (its README links it)"


def fedbn_part_path(domain_dir: PathLike, part: int) -> Path:
    return Path(domain_dir) / "partitions" / f"train_part{part}.pkl"


def load_fedbn_pickle(path: PathLike) -> ImageSet:
    """One FedBN ``(images, labels)`` pickle as an ImageSet (gray gets a channel axis)."""
    p = require_file(path, "FedBN Digits pickle", _FIX)
    obj = load_pickled(p, "an (images, labels) pickle", _FIX)
    try:
        images, labels = obj
    except CORRUPT_ERRORS as exc:
        what = f"not an (images, labels) pickle ({type(exc).__name__}: {exc})"
        raise data_error(p, what, _FIX) from None
    images = np.asarray(images)
    if images.dtype != np.uint8 or not (
        images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
    ):
        what = f"images are {images.dtype} {images.shape}, expected uint8 (N,H,W[,3])"
        raise data_error(p, what, _FIX)
    labels = labels_from(labels, p)
    if labels.shape[0] != images.shape[0]:
        raise data_error(p, f"{images.shape[0]} images but {labels.shape[0]} labels", _FIX)
    return image_set(images[..., None] if images.ndim == 3 else images, labels)


def concat(sets: list[ImageSet]) -> ImageSet:
    return image_set(
        np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets])
    )


def read_fedbn_digits(domain_dir: PathLike, split: str, *, parts: int = FEDBN_PARTS) -> ImageSet:
    """``test.pkl``, or train parts ``0..parts-1`` concatenated in order (FedBN's ``percent``).

    FedBN's loader takes ``int(percent * 10)`` parts for percent >= 0.1, so ``parts`` is that
    number; loading only the needed parts avoids reading the whole training set.
    """
    d = Path(domain_dir)
    check_split(split, ("train", "test"), d)
    if not d.is_dir():
        raise data_error(d, "FedBN Digits domain folder does not exist", _FIX)
    if split == "test":
        return load_fedbn_pickle(d / "test.pkl")
    if not 1 <= parts <= FEDBN_PARTS:
        raise data_error(d, f"parts={parts} is outside 1..{FEDBN_PARTS}", "pass int(percent * 10)")
    sets = [load_fedbn_pickle(fedbn_part_path(d, i)) for i in range(parts)]
    shapes = {s.images.shape[1:] for s in sets}
    if len(shapes) != 1:
        raise data_error(d, f"train parts have different image shapes {sorted(shapes)}", _FIX)
    return concat(sets)


def fedbn_part_sizes(domain_dir: PathLike) -> list[int]:
    """Number of images in each of the 10 train parts (to map a ``percent`` onto parts)."""
    return [len(load_fedbn_pickle(fedbn_part_path(domain_dir, i))) for i in range(FEDBN_PARTS)]


def fedbn_cut_parts(train: ImageSet, parts: int = FEDBN_PARTS) -> list[ImageSet]:
    """FedBN's ``split()``: ``parts`` consecutive slices of ``len // parts``, remainder dropped."""
    size = len(train) // parts
    return [
        image_set(train.images[i * size : (i + 1) * size], train.labels[i * size : (i + 1) * size])
        for i in range(parts)
    ]
