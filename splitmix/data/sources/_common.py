"""Shared plumbing for the raw-format readers: one-line errors, single-pass archive reads, decoding.

Every reader funnels failures through :func:`data_error` so that a truncated download, a wrong file
or an unexpected layout surfaces as one ``DataError`` line naming the file, what is wrong and the
fix, which the CLI prints without a traceback.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from splitmix.data.imageset import ImageSet
from splitmix.errors import DataError

PathLike = str | os.PathLike[str]

REFETCH = "delete it and fetch it again from its official source"

# Errors the stdlib/PIL/scipy raise on damaged or foreign bytes; all of them mean "bad file".
CORRUPT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    zlib.error,
    tarfile.TarError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    SyntaxError,  # PIL raises it for some malformed images
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def oneline(text: object) -> str:
    """Put a message on one line (library messages can contain newlines); spaces are kept."""
    return " ".join(str(text).splitlines())


def data_error(path: PathLike, what: object, fix: str = REFETCH) -> DataError:
    """The single error shape of this package: ``<file>: <what is wrong>; <fix>``."""
    return DataError(oneline(f"{os.fspath(path)}: {what}; {fix}"))


def require_file(path: PathLike, what: str, fix: str = "") -> Path:
    """Return ``path`` as a Path, or fail naming it when it is not an existing regular file."""
    p = Path(path)
    if not p.is_file():
        state = "is not a file" if p.exists() else "does not exist"
        raise data_error(p, f"{what} {state}", fix or f"place the {what} at this path")
    return p


def check_split(split: str, allowed: Sequence[str], path: PathLike) -> None:
    if split not in allowed:
        raise data_error(path, f"unknown split {split!r}", f"use one of: {', '.join(allowed)}")


def labels_from(values: object, path: PathLike, num_classes: int = 10) -> np.ndarray:
    """Validate integral labels in ``0..num_classes-1`` and return them as int64.

    Float labels (FedBN pickles store some as float) are accepted only when they are whole
    numbers, so a wrongly scaled column cannot silently become a label.
    """
    arr = np.asarray(values).reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise data_error(path, "labels are not whole numbers")
    elif arr.dtype.kind not in "iub":
        raise data_error(path, f"labels have dtype {arr.dtype}, expected integers")
    out = arr.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= num_classes):
        raise data_error(
            path, f"labels span {out.min()}..{out.max()}, expected 0..{num_classes - 1}"
        )
    return out


def read_tar_members(path: PathLike, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Read, in ONE sequential pass, the regular members whose normalised name ``want`` accepts.

    A .tar.gz cannot be read at random cheaply (every seek re-inflates from the start), so the
    readers collect the bytes they need in one stream pass and decode afterwards.
    """
    p = require_file(path, "archive")
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(p, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                if want(name):
                    fh = tf.extractfile(member)
                    if fh is None:  # pragma: no cover - isfile() members always have data
                        continue
                    found[name] = fh.read()
    except CORRUPT_ERRORS as exc:
        raise data_error(p, f"unreadable archive ({type(exc).__name__}: {exc})") from None
    return found


def decode_image(data: bytes, mode: str | None, where: str) -> Image.Image:
    """Decode encoded image bytes (PNG/JPEG/...) fully, converted to ``mode`` unless it is None."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except CORRUPT_ERRORS as exc:
        raise data_error(where, f"cannot decode image ({oneline(exc)})") from None
    return im if mode is None or im.mode == mode else im.convert(mode)


def decode_fixed_size(
    blobs: Sequence[bytes], names: Sequence[str], height: int, width: int, channels: int
) -> np.ndarray:
    """Decode same-size images into one preallocated uint8 NHWC array (no per-image copies kept).

    A size mismatch is an error rather than a silent resize: these formats promise a fixed size,
    so a different one means a different (wrong) file.
    """
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(blobs), height, width, channels), dtype=np.uint8)
    for i, (blob, name) in enumerate(zip(blobs, names, strict=True)):
        im = decode_image(blob, mode, name)
        if im.size != (width, height):
            raise data_error(name, f"image is {im.size[0]}x{im.size[1]}, expected {width}x{height}")
        out[i] = np.asarray(im).reshape(height, width, channels)
    return out


def image_set(images: np.ndarray, labels: np.ndarray) -> ImageSet:
    """Build an ImageSet owning contiguous, writeable arrays.

    Readers often hold transposed views or read-only ``np.frombuffer`` arrays; consumers should
    not have to care which.
    """
    req = ["C_CONTIGUOUS", "WRITEABLE"]
    return ImageSet(
        np.require(images, dtype=np.uint8, requirements=req),
        np.require(labels, dtype=np.int64, requirements=req),
    )
