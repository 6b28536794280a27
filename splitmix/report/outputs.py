"""Atomic file output for tables, figures and the manifest.

A report may be interrupted (Ctrl-C, a killed Snakemake job); every file is written to a temporary
file in the target directory and ``os.replace``-d over the target, so a reader sees the old
complete file or the new one, never half of one. Figures are rendered without timestamps so the
same rows give the same bytes (tables are checked byte-for-byte in tests).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from splitmix.atomic import atomic_write_bytes

# PDF/PNG metadata without creation dates: reruns on the same rows give identical files.
_METADATA = {
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": "splitmix-bench"},
    "png": {"Software": "splitmix-bench"},
}
DPI = 150


def save_figure(fig: Any, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Render ``fig`` once per format into memory, then write each file atomically."""
    written = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_METADATA.get(fmt), bbox_inches="tight")
        path = Path(f"{stem}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        written.append(path)
    return written
