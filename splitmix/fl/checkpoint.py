"""Atomic writes of checkpoints and small text files.

A run may be killed at any instant (SIGKILL, OOM, a cluster pre-emption). Every file is written to a
temporary file in the same directory and then ``os.replace``-d over the target, which is atomic on
POSIX: a reader, or the resumed run, sees either the old complete file or the new complete file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write: Any, mode: str, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            if durable:  # survive a power loss too, not only a killed process
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path`` (fsync-ed: a checkpoint
    is what a resumed run trusts)."""
    _atomic(Path(path), lambda fh: torch.save(obj, fh), "wb", durable=True)


def atomic_write_text(text: str, path: Path, durable: bool = True) -> None:
    """Write ``text`` to ``path`` atomically; ``durable=False`` skips the fsync, for files that
    are rebuilt from the checkpoint anyway (the CSV logs)."""
    _atomic(Path(path), lambda fh: fh.write(text), "w", durable)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by the engine (plain tensors, dicts and numbers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)
