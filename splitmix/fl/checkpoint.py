"""Checkpoints: written atomically and fsync-ed, because a resumed run trusts them.

A run may be killed at any instant (SIGKILL, OOM, a cluster pre-emption); ``splitmix.atomic``
guarantees a reader sees the old complete file or the new complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from splitmix.atomic import atomic_write


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    atomic_write(path, lambda fh: torch.save(obj, fh), "wb", durable=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by the engine (plain tensors, dicts and numbers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)
