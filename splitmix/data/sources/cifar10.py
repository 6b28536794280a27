"""CIFAR-10 in the official "python version" (``cifar-10-python.tar.gz``).

Members ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` are pickled dicts with
``b'data'`` (N, 3072) uint8, each row a 32x32 image stored channel-major (1024 R, 1024 G, 1024 B,
each row-major), and ``b'labels'`` (N ints). Train concatenates the five batches in order, which is
torchvision's order too. Integrity is the acquisition layer's job (the archive's sha256 is
pinned); the batches are still unpickled through ``safe_pickle``, which rebuilds only arrays and
plain data, so an unverified extracted folder cannot run code either.
"""

from __future__ import annotations

import pickle
from pathlib import Path, PurePosixPath

import numpy as np

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    CORRUPT_ERRORS,
    PathLike,
    check_split,
    data_error,
    image_set,
    labels_from,
    read_tar_members,
)
from splitmix.data.sources.safe_pickle import RefusedGlobal, safe_loads

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_SIDE = 32


def _batches_from_dir(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    root = path / CIFAR10_FOLDER if (path / CIFAR10_FOLDER).is_dir() else path
    return {n: (root / n).read_bytes() for n in names if (root / n).is_file()}


def _batches_from_tar(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    def want(name: str) -> bool:
        pp = PurePosixPath(name)
        return pp.parent.name == CIFAR10_FOLDER and pp.name in names

    return {PurePosixPath(k).name: v for k, v in read_tar_members(path, want).items()}


def _decode_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = safe_loads(blob, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
    except RefusedGlobal as exc:
        what = f"refused to unpickle {exc.qualified}: a CIFAR batch holds only arrays and lists"
        raise data_error(where, what) from None
    except CORRUPT_ERRORS + (pickle.UnpicklingError, AttributeError) as exc:
        raise data_error(where, f"not a CIFAR batch pickle ({type(exc).__name__}: {exc})") from None
    if data is None or labels is None:
        raise data_error(where, "batch dict lacks b'data' or b'labels'")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
        raise data_error(where, f"b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = labels_from(labels, where)
    if labels.shape[0] != data.shape[0]:
        raise data_error(where, f"{data.shape[0]} images but {labels.shape[0]} labels")
    # rows are CHW-flattened; NHWC is the ImageSet layout
    return data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1), labels


def read_cifar10_pickles(tar_gz: PathLike, split: str) -> ImageSet:
    """CIFAR-10 (N, 32, 32, 3) from ``cifar-10-python.tar.gz`` (or its extracted folder)."""
    src = Path(tar_gz)
    check_split(split, tuple(CIFAR10_BATCHES), src)
    names = CIFAR10_BATCHES[split]
    blobs = _batches_from_dir(src, names) if src.is_dir() else _batches_from_tar(src, names)
    missing = [n for n in names if n not in blobs]
    if missing:
        raise data_error(
            src,
            f"no {CIFAR10_FOLDER}/{missing[0]} ({len(missing)} of {len(names)} batches missing)",
            "use the official cifar-10-python.tar.gz",
        )
    parts = [_decode_batch(blobs[n], f"{src}:{CIFAR10_FOLDER}/{n}") for n in names]
    return image_set(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
