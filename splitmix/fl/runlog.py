"""Per-round and per-client CSV logs that survive a crash.

Rows are appended (and flushed) as rounds finish so that a live run can be watched; the whole file
is rewritten atomically from the in-memory rows at every checkpoint. After a crash the resumed run
rewrites the file from the checkpoint's rows, dropping any rows appended after that checkpoint (they
are recomputed, identically, by the resumed run).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from splitmix.atomic import atomic_write_text


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip: resumed and straight logs compare equal
    return str(value)


class CsvLog:
    """An append-only CSV file with a fixed header, backed by the rows kept in memory."""

    def __init__(
        self, path: Path, columns: Sequence[str], rows: list[dict[str, Any]] | None = None
    ):
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = list(rows or [])

    def _render(self, rows: list[dict[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if header:
            writer.writerow(self.columns)
        for row in rows:
            writer.writerow([_fmt(row.get(c)) for c in self.columns])
        return buf.getvalue()

    def rewrite(self) -> None:
        """Replace the file with exactly the rows in memory (atomic)."""
        # no fsync: after any crash the resumed run rewrites this file from its checkpoint
        atomic_write_text(self.path, self._render(self.rows, header=True))

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Record ``rows`` in memory and append them to the file (not atomic; see module doc)."""
        self.rows.extend(rows)
        with self.path.open("a") as fh:
            fh.write(self._render(rows, header=False))
            fh.flush()
