"""MNIST in LeCun's IDX format (``train-images-idx3-ubyte.gz`` and friends).

IDX header: big-endian int32 magic (0x00000803 for uint8 3-D images, 0x00000801 for uint8 1-D
labels), then one big-endian int32 per dimension, then the raw bytes. Checking the magic and the
byte count catches a swapped images/labels pair and truncated downloads before anything trains.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from splitmix.data.imageset import ImageSet
from splitmix.data.sources._common import (
    CORRUPT_ERRORS,
    PathLike,
    data_error,
    image_set,
    labels_from,
    require_file,
)

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    """Whole file content, gunzipped when it starts with the gzip magic (raw IDX also works)."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except CORRUPT_ERRORS as exc:
        raise data_error(path, f"damaged gzip stream ({type(exc).__name__}: {exc})") from None


def read_idx(path: PathLike, magic: int, ndim: int) -> np.ndarray:
    """Parse one uint8 IDX file into an array of shape given by its header."""
    p = require_file(path, "IDX file")
    buf = _read_maybe_gzip(p)
    header_len = 4 + 4 * ndim
    found = int.from_bytes(buf[:4], "big") if len(buf) >= 4 else None
    if found != magic:
        raise data_error(
            p,
            f"IDX magic is {'missing' if found is None else f'0x{found:08x}'}"
            f", expected 0x{magic:08x}",
            "check that images and labels files are not swapped, else fetch it again",
        )
    if len(buf) < header_len:
        raise data_error(p, f"only {len(buf)} bytes, shorter than the IDX header")
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(buf) - header_len != expected:
        raise data_error(
            p, f"IDX body has {len(buf) - header_len} bytes, header {dims} needs {expected}"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header_len).reshape(dims)


def read_mnist_idx(images_gz: PathLike, labels_gz: PathLike) -> ImageSet:
    """MNIST images (N, 28, 28, 1) and labels from an IDX3/IDX1 pair (gzipped or raw)."""
    images = read_idx(images_gz, IDX_IMAGES_MAGIC, 3)
    labels = read_idx(labels_gz, IDX_LABELS_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise data_error(
            images_gz,
            f"{images.shape[0]} images but {labels_gz} has {labels.shape[0]} labels",
            "use the images and labels files of the same split",
        )
    return image_set(images[..., None], labels_from(labels, labels_gz))
