"""Read the pickles of published datasets without running code from them.

FedBN's Digits shards and DomainNet split lists, and the CIFAR-10 batches, are pickles; their
release format cannot change. A pickle may name any importable callable and call it while it is
read (``os.system`` is one line away), and these files come from Google-Drive zips and mirrors.
:class:`SafeUnpickler` therefore rebuilds only what such a file legitimately holds: numpy arrays,
dtypes and scalars, and plain containers (lists, tuples, dicts, sets, strings, bytes, numbers).
Any other global is refused before it is imported, as one ``DataError`` line.

:func:`load_pickled` reads a path the way ``np.load(path, allow_pickle=True)`` does (a ``.npy``
file, including one of dtype object, or a raw pickle), which is how FedBN reads these files.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from splitmix.data.sources._common import CORRUPT_ERRORS, data_error

# (module, name) a dataset pickle may import. numpy 1.x writes ``numpy.core``, 2.x ``numpy._core``;
# Python-2 pickles (CIFAR-10) say ``__builtin__``; Python 3 writes bytes at protocol 2 through
# ``_codecs.encode``. Every entry builds data, none runs anything.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    | {(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar")}
    | {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
    | {
        (m, n)
        for m in ("builtins", "__builtin__")
        for n in ("set", "frozenset", "bytearray", "complex", "slice")
    }
)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle asked for a global outside the allowed set (it was not imported)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that imports only numpy array/dtype/scalar rebuilders and plain builtins."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise RefusedGlobal(module, name)
        return super().find_class(module, name)


def safe_loads(blob: bytes, *, encoding: str = "latin1") -> Any:
    """Unpickle ``blob`` with :class:`SafeUnpickler` (raises RefusedGlobal on a foreign global)."""
    return SafeUnpickler(io.BytesIO(blob), encoding=encoding).load()


def _load_npy(fh: IO[bytes]) -> Any:
    """A ``.npy`` file as ``np.load`` reads it; an object array's payload is unpickled safely."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    dtype = header[2]
    if dtype.hasobject:  # np.save pickles the whole object array after the header
        return SafeUnpickler(fh, encoding="latin1").load()
    fh.seek(0)
    return np.lib.format.read_array(fh, allow_pickle=False)


def load_pickled(path: Path, what: str, fix: str) -> Any:
    """Read ``path`` like ``np.load(allow_pickle=True)``, refusing anything but data.

    ``what`` names the expected content and ``fix`` the remedy, both for the one-line DataError
    raised when the file is refused, damaged, or not a pickle at all.
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(_NPY_MAGIC))
            fh.seek(0)
            if magic == _NPY_MAGIC:
                return _load_npy(fh)
            if magic.startswith(_ZIP_MAGIC):
                raise data_error(path, f"is an .npz/zip archive, not {what}", fix)
            return SafeUnpickler(fh, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise data_error(
            path,
            f"refused to unpickle {exc.qualified}: {what} holds only numpy arrays and plain "
            "data, so this file is crafted or foreign (nothing from it was run)",
            fix,
        ) from None
    except CORRUPT_ERRORS + (pickle.UnpicklingError, AttributeError, MemoryError) as exc:
        raise data_error(path, f"not {what} ({type(exc).__name__}: {exc})", fix) from None
