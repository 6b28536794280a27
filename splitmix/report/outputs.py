"""Atomic file output for tables, figures and the manifest.

A report may be interrupted (Ctrl-C, a killed Snakemake job); every file is written to a temporary
file in the target directory and ``os.replace``-d over the target, so a reader sees the old
complete file or the new one, never half of one. Figures are rendered without timestamps so the
same rows give the same bytes (tables are checked byte-for-byte in tests).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

# PDF/PNG metadata without creation dates: reruns on the same rows give identical files.
_METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": "splitmix-bench"},
    "png": {"Software": "splitmix-bench"},
}
DPI = 150


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` so that no partial file can ever be observed there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def save_figure(fig: Any, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Render ``fig`` once per format into memory, then write each file atomically."""
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_METADATA.get(fmt), bbox_inches="tight")
        path = Path(f"{stem}.{fmt}")
        atomic_write_bytes(buf.getvalue(), path)
        written.append(path)
    return written
