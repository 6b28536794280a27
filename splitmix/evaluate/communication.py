"""Rows from a run's training logs: communication (``comm.csv``) and per-round curves (``log.csv``).

Communication is what the engine counted from the tensors actually exchanged, one ``comm.csv`` row
per (round, client that took part): ``bytes_down`` (server -> client), ``bytes_up`` (client ->
server) and the client's local ``seconds``. Per client this module reports the totals up to and
including the best round (the cost of the model that is evaluated), the totals over the whole run,
and the mean per round over the rounds the client took part in (Fig. 5's "per round" cost; the
run-average including skipped rounds is ``total / rounds``). A client that never took part has
totals 0 and no per-round row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from splitmix.errors import DataError
from splitmix.evaluate.rows import ALL, MEAN, RunKey, client_rows

COMM_COLUMNS = ("round", "client", "bytes_down", "bytes_up", "seconds")
LOG_REQUIRED = ("round", "seconds", "train_loss")
# log.csv column prefix -> row metric (per width)
LOG_CURVES = {"val_acc@": "val_acc", "val_loss@": "val_loss", "val_ra@": "val_robust_acc"}


def read_log_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a training log, one-line DataError naming the file if it is absent or lacks columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; the training run is incomplete, re-run `splitmix train`")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).strip()[:80]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {list(required)}"
        )
    return df


def communication_rows(
    key: RunKey,
    comm: pd.DataFrame,
    best_round: int,
    names: Sequence[str],
    domains: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Per-client communication and local-time rows (plus domain and overall means).

    ``names[k]`` is the name of client index ``k`` (the ``client`` column of comm.csv).
    """
    known = set(range(len(names)))
    stray = sorted(set(comm["client"].astype(int)) - known)
    if stray:
        raise DataError(
            f"comm.csv names client index {stray[0]} but the federation has {len(names)} clients;"
            " the run directory does not match its run.json"
        )
    rows: list[dict[str, Any]] = []
    to_best = comm[comm["round"] <= best_round]
    for direction in ("down", "up"):
        col = f"bytes_{direction}"
        total = comm.groupby("client")[col].sum()
        best = to_best.groupby("client")[col].sum()
        mean = comm.groupby("client")[col].mean()
        rows += _per_client(key, f"{col}_total_to_best", best, names, domains, fill=0.0)
        rows += _per_client(key, f"{col}_total", total, names, domains, fill=0.0)
        rows += _per_client(key, f"{col}_per_round", mean, names, domains, fill=None)
    secs = comm.groupby("client")["seconds"]
    rows += _per_client(key, "client_seconds_total", secs.sum(), names, domains, fill=0.0)
    rows += _per_client(key, "client_seconds_per_round", secs.mean(), names, domains, fill=None)
    return rows


def _per_client(
    key: RunKey,
    metric: str,
    series: pd.Series,
    names: Sequence[str],
    domains: Mapping[str, str],
    fill: float | None,
) -> list[dict[str, Any]]:
    values: dict[str, float] = {}
    for k, name in enumerate(names):
        if k in series.index:
            values[name] = float(series.loc[k])
        elif fill is not None:
            values[name] = fill
    return client_rows(key, metric, values, domains)


def curve_rows(
    key: RunKey, log: pd.DataFrame, lam_clean: float | None, lam_robust: float | None
) -> list[dict[str, Any]]:
    """Per-round rows: wall time and training loss of every round, and the validation curves of
    every width (mean over clients) in the rounds that were validated.

    ``lam_clean``/``lam_robust``: the dual-BN mixing the engine validated SA and RA with (0 and 1
    for dual-BN models, None otherwise).
    """
    rows: list[dict[str, Any]] = []
    curves = [
        (col, metric, float(col[len(prefix) :]))
        for col in log.columns
        for prefix, metric in LOG_CURVES.items()
        if col.startswith(prefix)
    ]
    for rec in log.to_dict("records"):
        r = int(rec["round"])
        rows.append(key.row("round_seconds", rec["seconds"], round=r))
        if _finite(rec["train_loss"]):
            rows.append(key.row("train_loss", rec["train_loss"], round=r))
        for col, metric, width in curves:
            if not _finite(rec[col]):
                continue  # a round that was not validated (eval_every > 1)
            lam = lam_robust if metric == "val_robust_acc" else lam_clean
            rows.append(
                key.row(metric, rec[col], round=r, width=width, lam=lam, client=MEAN, domain=ALL)
            )
    return rows


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
