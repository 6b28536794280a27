"""Checkpoints: written atomically and fsync-ed, because a resumed run trusts them; read safely,
because a run directory may come from anyone.

A run may be killed at any instant (SIGKILL, OOM, a cluster pre-emption); ``splitmix.atomic``
guarantees a reader sees the old complete file or the new complete one.

Unpickling runs code chosen by whoever wrote the file, so every checkpoint is loaded with
``torch.load(weights_only=True)``: only tensors and plain data (dicts, lists, tuples, strings,
numbers) come back, and anything else is refused before it is built. The writer keeps to that
subset (:func:`plain`), so the engine's own files always load. Every reader of ``checkpoint.pt``
and ``best.pt`` goes through :func:`load_checkpoint`, which turns a refused, truncated, empty or
foreign file into one ``DataError`` line naming the file and how to recover.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitmix.atomic import atomic_write
from splitmix.errors import DataError

# keys every engine checkpoint (resume state and best model alike) carries
REQUIRED_KEYS = ("format", "config_hash", "round", "algorithm")

# how to recover, per file name: a resume state can be dropped, a best model must be retrained
_FIXES = {
    "checkpoint.pt": "pass --restart to train the run from round 0 (or use a new --out directory)",
    "best.pt": "retrain the run (python -m splitmix train ... --restart) to rebuild it",
}
_DEFAULT_FIX = "delete it and retrain the run with --restart"

_LEAVES = (torch.Tensor, str, bytes, int, float, bool, type(None))


def plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` restricted to what ``weights_only`` loading rebuilds, or a TypeError naming the key.

    Numpy scalars (``np.mean`` results in log rows) become the Python number they equal; any
    other object would make the checkpoint unloadable, which must fail when it is written, in
    the developer's test, rather than when a user resumes hours later.
    """
    if isinstance(obj, np.generic) and not isinstance(obj, np.object_):
        return obj.item()
    if isinstance(obj, _LEAVES):
        return obj
    if type(obj) in (dict, OrderedDict):
        return type(obj)((k, plain(v, f"{where}.{k}")) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only "
        "tensors, dicts, lists, tuples, strings and numbers (they are loaded with weights_only)"
    )


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` of plain data that never leaves a half-written file at ``path``."""
    data = plain(obj, Path(path).name)
    atomic_write(path, lambda fh: torch.save(data, fh), "wb", durable=True)


def _reason(exc: BaseException) -> str:
    """One short phrase for why torch could not load a file (its messages span many lines)."""
    text = str(exc)
    found = re.search(r"unsupported GLOBAL (\S+)", text) or re.search(
        r"Unsupported global: GLOBAL (\S+)", text
    )
    if found:
        name = found.group(1).rstrip(".")
        return f"refused to unpickle {name}: it holds code or objects, not only tensors and data"
    if isinstance(exc, EOFError) or not text.strip():
        return f"{type(exc).__name__}: empty or cut short"
    operand = re.search(r"Unsupported operand \d+", text)
    if operand:
        return f"not a torch checkpoint ({operand.group(0)})"
    if "central directory" in text or isinstance(exc, zipfile.BadZipFile):
        return "truncated or not a torch zip archive"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:160]}"


def load_checkpoint(path: Path, required: tuple[str, ...] = REQUIRED_KEYS) -> dict[str, Any]:
    """Load a checkpoint written by the engine, running no code from the file.

    Raises a one-line DataError naming the file and the fix when it is missing, cannot be read,
    holds anything but tensors and plain data, or lacks the ``required`` keys.
    """
    path = Path(path)
    fix = _FIXES.get(path.name, _DEFAULT_FIX)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: noise on stderr
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: does not exist; {fix}") from None
    except Exception as exc:  # whatever a foreign byte stream provokes, it is a bad file
        raise DataError(f"{path}: cannot be loaded ({_reason(exc)}); {fix}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, not a splitmix checkpoint; {fix}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataError(f"{path}: not a splitmix checkpoint (no {', '.join(missing)}); {fix}")
    return obj
