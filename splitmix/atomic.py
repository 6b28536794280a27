"""Atomic file writes: the one way this project writes any output.

A file is written to a temporary name in the target's own directory and then ``os.replace``-d over
the target, which is atomic on POSIX: a reader (or a resumed run) sees the old file or the
complete new one, never a half-written one, and a crash leaves at worst a hidden ``.tmp`` file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb", *, durable: bool = False
) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, then rename it over ``path``.

    ``durable`` also fsyncs before the rename, so the file survives a power loss, not only a
    killed process (checkpoints, which a resumed run trusts).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    atomic_write(path, lambda fh: fh.write(data), "wb", durable=durable)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    atomic_write(path, lambda fh: fh.write(text), "w", durable=durable)
