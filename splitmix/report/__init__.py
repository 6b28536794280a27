"""Tables and figures regenerated from evaluation rows alone
(docs/design.md#files-are-the-contract).

Entry points: ``make_report(rows_glob, out, formats)`` (what ``python -m splitmix report`` runs),
``load_rows(glob)`` (rows + run config columns), ``build_table1(rows)``, the claims check
(``read_claims(path)``, ``check_claims(rows, claims)``; docs/claims.md) and the figure builders in
``splitmix.report.figures.BUILDERS``. Imported lazily: ``python -m splitmix`` registers every
command at start-up and should not pay for matplotlib/seaborn unless it draws.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_report": "splitmix.report.build",
    "load_rows": "splitmix.report.load",
    "build_table1": "splitmix.report.tables",
    "read_claims": "splitmix.report.claims",
    "check_claims": "splitmix.report.claims",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'splitmix.report' has no attribute {name!r}")
