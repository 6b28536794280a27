"""Atomic file writes: the one way this project writes any output.

A file is written to a temporary name in the target's own directory and then ``os.replace``-d over
the target, which is atomic on POSIX: a reader (or a resumed run) sees the old file or the
complete new one, never a half-written one, and a crash leaves at worst a hidden ``.tmp`` file.

A failure inside ``write`` is re-raised as what it really is. ``torch.save`` calls the file's
``write`` from C++ and turns whatever that raises (a Ctrl-C, a full disk) into a ``RuntimeError``
("unexpected pos ...") whose ``__context__`` is the original exception; left alone, a Ctrl-C
would print two chained tracebacks and exit 1, and a full disk would not name the file.
"""

from __future__ import annotations

import contextlib
import errno
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
    if path.is_dir():  # os.replace would fail naming the temp file, not the path given
        raise IsADirectoryError(errno.EISDIR, "is a directory, a file name is needed", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the folder that cannot be written, not a random temp name
        raise type(exc)(exc.errno, exc.strerror, str(path.parent)) from None
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = _root_cause(exc, path)
        if cause is exc:
            raise
        raise cause from None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, newest first."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not s for s in seen):
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _root_cause(exc: BaseException, path: Path) -> BaseException:
    """The exception a failed write should surface as.

    An interrupt anywhere in the chain wins (the user asked to stop; ``splitmix.cli`` prints
    ``interrupted``, exit 130). Otherwise an ``OSError`` (disk full, read-only file system) is
    re-raised naming ``path``, because errors raised by ``write`` on an open file carry no file
    name, so the message could not say which file or which file system to fix.
    """
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, KeyboardInterrupt):
            return e
    for e in chain:
        if isinstance(e, OSError):
            if e.filename is not None:
                return e
            code = e.errno if e.errno is not None else errno.EIO
            return type(e)(code, e.strerror or os.strerror(code), str(path))
    return exc


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> None:
    atomic_write(path, lambda fh: fh.write(data), "wb", durable=durable)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    atomic_write(path, lambda fh: fh.write(text), "w", durable=durable)
