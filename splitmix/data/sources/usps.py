"""USPS handwritten digits (16x16 gray) from the two formats in circulation.

* libsvm ``usps.bz2`` / ``usps.t.bz2`` (the files FedBN and torchvision use): lines
  ``label idx:val ...`` with labels 1..10 (digit = label - 1) and 256 values in [-1, 1].
* the "Kaggle" ``usps.h5``: ``{train,test}/data`` (N, 256) float in [0, 1], ``{split}/target``.
"""

from __future__ import annotations

import bz2

import h5py
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

USPS_SIDE = 16
USPS_PIXELS = USPS_SIDE * USPS_SIDE
_RANGE_TOL = 1e-4  # the files print 6 decimals; anything further out is a different scaling


def _libsvm_text(path: PathLike) -> list[str]:
    p = require_file(path, "USPS libsvm file")
    raw = p.read_bytes()
    try:
        if raw.startswith(b"BZh"):
            raw = bz2.decompress(raw)
        return raw.decode("ascii").splitlines()
    except CORRUPT_ERRORS as exc:
        raise data_error(p, f"damaged bz2/libsvm text ({type(exc).__name__}: {exc})") from None


def parse_libsvm(path: PathLike, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense float32 features (N, num_features) and raw float labels of a libsvm text file.

    libsvm is sparse: an index that a line omits has value 0.0. The official USPS files list all
    256 indices, but honouring the format costs nothing. Values are parsed with
    ``np.asarray(strings, dtype=float32)``, the same call FedBN's preprocessing makes, so the
    float32 values (and hence the uint8 pixels derived from them) are identical to FedBN's.
    """
    labels: list[str] = []
    index_tokens: list[str] = []
    value_tokens: list[str] = []
    counts: list[int] = []
    for lineno, line in enumerate(_libsvm_text(path), start=1):
        tokens = line.replace(":", " ").split()
        if not tokens:
            continue
        if len(tokens) % 2 != 1 or line.count(":") != len(tokens) // 2:
            raise data_error(path, f"line {lineno} is not 'label idx:val ...' libsvm text")
        labels.append(tokens[0])
        index_tokens.extend(tokens[1::2])
        value_tokens.extend(tokens[2::2])
        counts.append(len(tokens) // 2)
    if not labels:
        raise data_error(path, "no samples in the file")
    try:
        y = np.asarray(labels, dtype=np.float64)
        cols = np.asarray(index_tokens, dtype=np.int64) - 1
        vals = np.asarray(value_tokens, dtype=np.float32)
    except ValueError as exc:
        raise data_error(path, f"non-numeric libsvm token ({exc})") from None
    if cols.size and (cols.min() < 0 or cols.max() >= num_features):
        raise data_error(
            path,
            f"feature indices span {cols.min() + 1}..{cols.max() + 1}, expected 1..{num_features}",
        )
    dense = np.zeros((len(labels), num_features), dtype=np.float32)
    rows = np.repeat(np.arange(len(labels)), counts)
    dense[rows, cols] = vals
    return dense, y


def read_usps_libsvm(path_bz2: PathLike) -> ImageSet:
    """USPS from the official libsvm file, pixels exactly as FedBN's preprocessing makes them.

    FedBN computes ``((v + 1) / 2 * 255).astype(uint8)`` in float32, i.e. it TRUNCATES (v = 0
    gives 127, not 128); we do the same so a rebuild from these files matches FedBN's pickles.
    """
    features, raw_labels = parse_libsvm(path_bz2, USPS_PIXELS)
    if features.min() < -1 - _RANGE_TOL or features.max() > 1 + _RANGE_TOL:
        raise data_error(
            path_bz2,
            f"values span {features.min():.4f}..{features.max():.4f}, expected [-1, 1]",
        )
    pixels = ((features + 1) / 2 * 255).clip(0, 255).astype(np.uint8)
    labels = labels_from(raw_labels - 1, path_bz2)  # libsvm USPS labels are 1..10
    return image_set(pixels.reshape(-1, USPS_SIDE, USPS_SIDE, 1), labels)


def read_usps_h5(path: PathLike, split: str) -> ImageSet:
    """USPS from the Kaggle-style ``usps.h5``; pixels = round-half-even(v * 255).

    This file is a different intensity scaling of the same images (values are not multiples of
    1/255), so rounding is our choice; it is close to, not bit-equal with, the libsvm pixels.
    """
    p = require_file(path, "USPS h5 file")
    check_split(split, ("train", "test"), p)
    try:
        with h5py.File(p, "r") as f:
            data = np.asarray(f[f"{split}/data"][()], dtype=np.float64)
            target = np.asarray(f[f"{split}/target"][()])
    except CORRUPT_ERRORS as exc:
        raise data_error(
            p, f"not a USPS h5 with {split}/data and {split}/target ({oneline_exc(exc)})"
        ) from None
    if data.ndim != 2 or data.shape[1] != USPS_PIXELS or target.shape[0] != data.shape[0]:
        raise data_error(
            p, f"{split}/data is {data.shape} with {target.shape[0]} targets, expected (N, 256)"
        )
    if data.size and (data.min() < -_RANGE_TOL or data.max() > 1 + _RANGE_TOL):
        raise data_error(p, f"{split}/data spans {data.min():.4f}..{data.max():.4f}, not [0, 1]")
    pixels = np.rint(data * 255).clip(0, 255).astype(np.uint8)
    return image_set(pixels.reshape(-1, USPS_SIDE, USPS_SIDE, 1), labels_from(target, p))


def oneline_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
