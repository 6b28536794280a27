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

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from splitmix.errors import DataError
from splitmix.evaluate.rows import ALL, MEAN, RunKey, client_rows
from splitmix.runfolder import (
    CHECKPOINT,
    COMM,
    LOG,
    RUN_RECORD,
    VAL_ACC,
    VAL_LOSS,
    VAL_RA,
    curve_prefix,
)

LOG_REQUIRED = ("round", "seconds", "train_loss")
# log.csv column prefix -> row metric (per width)
LOG_CURVES = {
    curve_prefix(VAL_ACC): "val_acc",
    curve_prefix(VAL_LOSS): "val_loss",
    curve_prefix(VAL_RA): "val_robust_acc",
}


# what repairs a damaged log: the engine rewrites both logs from checkpoint.pt when a finished run
# is trained again (it resumes after the last round and trains nothing)
LOG_FIX = (
    f"re-run this run's `python -m splitmix train` command without --restart (it rewrites {LOG} "
    f"and {COMM} from {CHECKPOINT}), or retrain it with --restart"
)


def read_log_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a training log; one-line DataError naming the file if it is absent, cut short, lacks
    columns or holds anything but numbers in ``required``.

    The engine writes whole lines with a full set of fields, so a last line without its newline,
    or a row with fewer fields than the header, means the file was cut short; pandas would
    silently fill the missing fields with NaN and the evaluation would drop them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing; the training run is incomplete, re-run `splitmix train`")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV (binary data); {LOG_FIX}") from None
    _check_whole_rows(path, text)
    try:
        df = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CSV ({first}); {LOG_FIX}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {list(required)}"
        )
    for col in required:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & (df[col].notna() | (col in KEY_COLUMNS))
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise DataError(
                f"{path}: column {col!r} row {i} = {df[col].iloc[i]!r} is not a number; {LOG_FIX}"
            )
        df[col] = values
    return df


KEY_COLUMNS = ("round", "client")  # never blank (other numbers are blank when not measured)


def _check_whole_rows(path: Path, text: str) -> None:
    """DataError if the file does not end with a newline or a row has a different field count."""
    if text and not text.endswith("\n"):
        raise DataError(f"{path}: the last line is cut off (no final newline); {LOG_FIX}")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return  # pandas reports an empty file below
    width = len(rows[0])
    for i, row in enumerate(rows[1:]):
        if len(row) != width:
            raise DataError(
                f"{path}: row {i} has {len(row)} fields, the header {width}; the file was cut "
                f"short or edited; {LOG_FIX}"
            )


def check_rounds(path: Path, log: pd.DataFrame, rounds: int, eval_every: int) -> None:
    """A finished run logs rounds 0..rounds-1 once each, with validation values in every round
    the engine validated (every ``eval_every``-th and the last); DataError naming ``path`` if not.
    """
    got = [int(r) for r in log["round"]]
    if got != list(range(rounds)):
        raise DataError(
            f"{path}: has rounds {_span(got)}, the run trained rounds 0..{rounds - 1}; {LOG_FIX}"
        )
    curves = [c for c in log.columns if any(c.startswith(p) for p in LOG_CURVES)]
    validated = log["round"].map(lambda r: (int(r) + 1) % eval_every == 0 or r == rounds - 1)
    for col in curves:
        values = pd.to_numeric(log[col], errors="coerce")
        lost = validated & ~values.map(_finite)
        if lost.any():
            r = int(log["round"][lost].iloc[0])
            raise DataError(f"{path}: round {r} has no {col} value, though it was validated; "
                            f"{LOG_FIX}")  # fmt: skip


def check_comm_rounds(path: Path, comm: pd.DataFrame, rounds: int) -> None:
    """Every comm.csv row belongs to a trained round (DataError naming ``path`` if not)."""
    stray = sorted({int(r) for r in comm["round"]} - set(range(rounds)))
    if stray or not (comm["round"] == comm["round"].round()).all():
        raise DataError(
            f"{path}: names round {stray[0] if stray else '?'}, the run trained rounds "
            f"0..{rounds - 1}; {LOG_FIX}"
        )


def _span(rounds: list[int]) -> str:
    if not rounds:
        return "none"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"{rounds[0]}..{rounds[-1]}"
    return ", ".join(map(str, rounds[:6])) + (" ..." if len(rounds) > 6 else "")


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
            f"{COMM} names client index {stray[0]} but the federation has {len(names)} clients; "
            f"the run directory does not match its {RUN_RECORD}"
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
