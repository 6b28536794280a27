"""Test-only fault injection for subprocesses of tests/reliability (never on a user's path).

Python imports ``sitecustomize`` at start-up from the first folder of ``sys.path`` that has one;
the tests put this folder on ``PYTHONPATH`` of the ``python -m splitmix`` they start, and set one
of these variables:

``SPLITMIX_TEST_PAUSE_WRITE=NAME`` and ``SPLITMIX_TEST_PAUSE_FLAG=PATH``
    The first ``write`` to the temporary file of ``NAME`` (e.g. ``best.pt``, written by
    ``splitmix.atomic``) creates ``PATH`` and then sleeps, so the test can send a real SIGINT
    while ``torch.save`` is in the middle of writing that file.
``SPLITMIX_TEST_ENOSPC=NAME``
    Every ``write`` to the temporary file of ``NAME`` fails with ENOSPC, as on a full disk, for
    sandboxes where the test cannot mount a small tmpfs.
``SPLITMIX_TEST_HIDE_MODULES=a,b``
    Those packages behave as if not installed (``sys.modules[name] = None``: importing raises
    ImportError, ``importlib.util.find_spec`` answers None), e.g. the optional ``export`` extra.

Both act on files opened through ``os.fdopen``, which is how ``splitmix.atomic`` opens its
temporary files (``.NAME.<random>.tmp``).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

_PAUSE = os.environ.get("SPLITMIX_TEST_PAUSE_WRITE")
_FLAG = os.environ.get("SPLITMIX_TEST_PAUSE_FLAG")
_FULL = os.environ.get("SPLITMIX_TEST_ENOSPC")
_HIDE = [m for m in os.environ.get("SPLITMIX_TEST_HIDE_MODULES", "").split(",") if m]


class _Faulty:
    """A file object whose ``write`` pauses or fails; everything else goes to the real file."""

    def __init__(self, fh, pause: bool, full: bool) -> None:
        self._fh, self._pause, self._full = fh, pause, full

    def write(self, data):
        if self._full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._pause:
            self._pause = False
            Path(_FLAG).write_text("writing\n")
            time.sleep(60)  # the test's SIGINT interrupts this sleep
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _target(fd: int) -> str:
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}")).name
    except OSError:
        return ""


if _PAUSE or _FULL:
    _real_fdopen = os.fdopen

    def _fdopen(fd, *args, **kwargs):
        fh = _real_fdopen(fd, *args, **kwargs)
        name = _target(fd) if isinstance(fd, int) else ""
        pause = bool(_PAUSE) and name.startswith(f".{_PAUSE}.")
        full = bool(_FULL) and name.startswith(f".{_FULL}.")
        return _Faulty(fh, pause, full) if pause or full else fh

    os.fdopen = _fdopen


if _HIDE:
    import sys

    for _name in _HIDE:
        sys.modules[_name] = None  # type: ignore[assignment]
