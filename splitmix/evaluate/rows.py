"""Evaluation rows: the long-format table every table and figure is drawn from (docs/evaluation.md).

One row is one number: ``(dataset, split, method, algorithm, seed, round, width, lam, client,
domain, metric, value, unit)``. The schema is checked on write AND on read, because rows are the
contract between the evaluate and report rules: a report must fail on a stale or hand-edited file
with one line naming the file and the problem, not draw a wrong figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from splitmix.atomic import atomic_write_text
from splitmix.errors import DataError

COLUMNS: tuple[str, ...] = (
    "dataset",
    "split",
    "method",
    "algorithm",
    "seed",
    "round",
    "width",
    "lam",
    "client",
    "domain",
    "metric",
    "value",
    "unit",
)
STRING_COLUMNS = ("dataset", "split", "method", "algorithm", "client", "domain", "metric", "unit")
INT_COLUMNS = ("seed", "round")
FLOAT_COLUMNS = ("width", "lam", "value")

TEST_ROUND = -1  # ``round`` of everything that is not a per-round quantity
MEAN = "mean"  # ``client`` of an unweighted mean over clients
ALL = "all"  # ``domain`` of a mean over every client


@dataclass(frozen=True)
class Metric:
    unit: str
    needs_width: bool  # rows of this metric must name a width
    doc: str


#: Every metric a row may carry, with its unit (the only unit allowed for it).
METRICS: dict[str, Metric] = {
    # test-time quality, per client / per-domain mean / mean over clients
    "acc": Metric("fraction", True, "standard (clean) test accuracy"),
    "robust_acc": Metric("fraction", True, "test accuracy under L-inf PGD on the assembled model"),
    # model cost at a width (client = '')
    "macs": Metric("MAC/sample", True, "multiply-accumulates of conv and linear layers"),
    "flops": Metric("FLOP/sample", True, "FlopCounterMode count = 2 x macs"),
    "params": Metric("count", True, "sum of numel of the assembled model's parameters"),
    "state_numel": Metric("count", True, "sum of numel of its state_dict (params + buffers)"),
    "model_bytes": Metric("B", True, "sum of numel x element size of its state_dict"),
    # deployment (evaluate.deployment): storage and measured latency of the deployed models
    "export_bytes": Metric("B", True, "bytes of the TorchScript file the default export writes"),
    "serve_all_bytes": Metric("B", False, "tensor bytes stored to serve every offered width"),
    "latency_b1": Metric("s/sample", True, "median time at batch 1, the method's fast module"),
    "latency_bn": Metric("s/sample", True, "median time per sample at batch latency_batch"),
    "latency_b1_plain": Metric("s/sample", True, "latency_b1 of the module as assembled"),
    "latency_bn_plain": Metric("s/sample", True, "latency_bn of the module as assembled"),
    "latency_batch": Metric("count", False, "the larger batch of the latency rows"),
    "latency_threads": Metric("count", False, "torch threads the latencies were measured with"),
    # communication, per client (and means), from comm.csv
    "bytes_down_total_to_best": Metric("B", False, "server->client bytes, rounds 0..best"),
    "bytes_up_total_to_best": Metric("B", False, "client->server bytes, rounds 0..best"),
    "bytes_down_total": Metric("B", False, "server->client bytes over all rounds"),
    "bytes_up_total": Metric("B", False, "client->server bytes over all rounds"),
    "bytes_down_per_round": Metric("B", False, "mean over the rounds the client took part in"),
    "bytes_up_per_round": Metric("B", False, "mean over the rounds the client took part in"),
    "client_seconds_total": Metric("s", False, "local training wall time over all rounds"),
    "client_seconds_per_round": Metric("s", False, "mean over the rounds the client took part in"),
    # per-round curves from log.csv (round = r)
    "round_seconds": Metric("s", False, "wall time of the round (training + validation)"),
    "train_loss": Metric("nat", False, "mean local training loss over the round's steps"),
    "val_acc": Metric("fraction", True, "validation accuracy, mean over clients"),
    "val_loss": Metric("nat", True, "validation loss, mean over clients"),
    "val_robust_acc": Metric("fraction", True, "validation PGD accuracy, mean over clients"),
    # run-level facts
    "best_round": Metric("round", False, "round of the best-validation checkpoint evaluated"),
    "run_seconds": Metric("s", False, "wall time of the training run (run.json)"),
    "eval_seconds": Metric("s", False, "wall time of this evaluation"),
    # the attack behind every robust_acc row of the file (only when robust accuracy was measured)
    "pgd_eps": Metric("intensity", False, "L-inf radius of the evaluation PGD, inputs in [0, 1]"),
    "pgd_steps": Metric("count", False, "iterations of the evaluation PGD"),
    "pgd_step_size": Metric("intensity", False, "step of the evaluation PGD"),
    # under-training flags (splitmix.evaluate.flags): 1 = flagged, 0 = not, with their evidence
    "flag_rising": Metric("flag", True, "widest width's validation accuracy still rising"),
    "flag_near_chance": Metric("flag", True, "clean mean test accuracy within a margin of chance"),
    "val_rise": Metric("fraction_change", True, "best of last k validations - best of k before"),
    "chance_acc": Metric("fraction", False, "accuracy of guessing: 1 / number of classes"),
    "flag_window": Metric("count", False, "k of the rising rule (validations compared)"),
    "flag_rise_margin": Metric("fraction", False, "a rise above this flags a run"),
    "flag_chance_margin": Metric("fraction", False, "accuracy <= chance + this flags a run"),
    "flag_noise_z": Metric("count", False, "standard errors of one validation the rise must beat"),
}
FLAG_METRICS = ("flag_rising", "flag_near_chance")
#: Units of wall-clock measurements: their values differ between two runs of the same inputs, so a
#: check that results are reproducible (bit for bit after a resume) leaves them out.
TIME_UNITS = ("s", "s/sample")


@dataclass(frozen=True)
class RunKey:
    """The identifying columns shared by every row of one run."""

    dataset: str
    split: str
    method: str
    algorithm: str
    seed: int

    def row(
        self,
        metric: str,
        value: float,
        *,
        round: int = TEST_ROUND,  # noqa: A002 - the column's name
        width: float | None = None,
        lam: float | None = None,
        client: str = "",
        domain: str = "",
    ) -> dict[str, Any]:
        """One row; ``metric`` must be known (its unit is filled in from ``METRICS``)."""
        spec = METRICS.get(metric)
        if spec is None:
            raise ValueError(f"unknown metric {metric!r}; add it to METRICS and docs/evaluation.md")
        return {
            "dataset": self.dataset,
            "split": self.split,
            "method": self.method,
            "algorithm": self.algorithm,
            "seed": int(self.seed),
            "round": int(round),
            "width": math.nan if width is None else float(width),
            "lam": math.nan if lam is None else float(lam),
            "client": client,
            "domain": domain,
            "metric": metric,
            "value": float(value),
            "unit": spec.unit,
        }


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with exactly ``COLUMNS`` in order and the schema's dtypes."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for c in STRING_COLUMNS:
        df[c] = df[c].astype(str)  # pandas' default text dtype, as ``read_rows`` gives
    for c in INT_COLUMNS:
        df[c] = df[c].astype("int64")
    for c in FLOAT_COLUMNS:
        df[c] = df[c].astype("float64")
    return df


# ---- checking ---------------------------------------------------------------------------------
def check_rows(df: pd.DataFrame, where: str) -> None:
    """Raise a one-line DataError naming ``where`` if ``df`` breaks the schema."""
    cols = list(df.columns)
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; evaluation rows need exactly "
            f"{', '.join(COLUMNS)} (re-run `python -m splitmix evaluate`)"
        )
    extra = [c for c in cols if c not in COLUMNS]
    if extra:
        raise DataError(
            f"{where}: unknown column(s) {', '.join(extra)}; allowed: {', '.join(COLUMNS)}"
        )
    if cols != list(COLUMNS):
        raise DataError(f"{where}: columns out of order {cols}; expected {list(COLUMNS)}")
    for c in INT_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[c]):
            raise DataError(f"{where}: column {c!r} must hold integers, got dtype {df[c].dtype}")
    for c in FLOAT_COLUMNS:
        if not pd.api.types.is_float_dtype(df[c]):
            raise DataError(f"{where}: column {c!r} must hold numbers, got dtype {df[c].dtype}")
    for c in STRING_COLUMNS:
        bad = df[c].map(lambda v: not isinstance(v, str))
        if bad.any():
            raise DataError(f"{where}: column {c!r} must hold text, row {_first(bad)} does not")
    _check_metrics(df, where)
    _check_values(df, where)


def _first(mask: pd.Series) -> int:
    """Index of the first True entry of ``mask`` (a 0-based data-row number for messages)."""
    return int(np.flatnonzero(mask.to_numpy())[0])


def _check_metrics(df: pd.DataFrame, where: str) -> None:
    unknown = sorted(set(df["metric"]) - set(METRICS))
    if unknown:
        raise DataError(
            f"{where}: unknown metric(s) {', '.join(map(repr, unknown))}; known: "
            f"{', '.join(METRICS)} (see docs/evaluation.md)"
        )
    expected = df["metric"].map(lambda m: METRICS[m].unit)
    wrong = df["unit"] != expected
    if wrong.any():
        i = _first(wrong)
        raise DataError(
            f"{where}: row {i} metric {df['metric'].iloc[i]!r} has unit {df['unit'].iloc[i]!r}, "
            f"must be {expected.iloc[i]!r}"
        )
    needs = df["metric"].map(lambda m: METRICS[m].needs_width)
    no_width = needs & df["width"].isna()
    if no_width.any():
        i = _first(no_width)
        raise DataError(f"{where}: row {i} metric {df['metric'].iloc[i]!r} needs a width, has none")


def _check_values(df: pd.DataFrame, where: str) -> None:
    bad = ~np.isfinite(df["value"].to_numpy())
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: row {i} metric {df['metric'].iloc[i]!r} has no finite value")
    units = df["metric"].map(lambda m: METRICS[m].unit)
    frac = (units == "fraction") & ~df["value"].between(0, 1)
    if frac.any():
        i = _first(frac)
        raise DataError(
            f"{where}: row {i} metric {df['metric'].iloc[i]!r} = {df['value'].iloc[i]} is not a "
            "fraction in [0, 1]"
        )
    flag = (units == "flag") & ~df["value"].isin((0.0, 1.0))
    if flag.any():
        i = _first(flag)
        raise DataError(
            f"{where}: row {i} metric {df['metric'].iloc[i]!r} = {df['value'].iloc[i]} is not a "
            "flag (0 or 1)"
        )


# ---- files ------------------------------------------------------------------------------------
def write_rows(df: pd.DataFrame, path: Path) -> Path:
    """Check ``df`` and write it to ``path`` as CSV, atomically (no half-written file remains)."""
    path = Path(path)
    check_rows(df, str(path))
    buf = io.StringIO()
    # default float formatting is repr (shortest exact round trip); NaN is written as ''
    df.to_csv(buf, index=False, na_rep="", lineterminator="\n")
    atomic_write_text(path, buf.getvalue())
    return path


def read_rows(path: Path) -> pd.DataFrame:
    """Read and check an evaluation-rows CSV; one-line DataError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such evaluation file; run `python -m splitmix evaluate` first")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CSV ({first})") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        check_rows(raw, str(path))  # raises the missing-column message
    df = raw.copy()
    for c in STRING_COLUMNS:
        df[c] = raw[c].astype(str)
    for c in INT_COLUMNS:
        df[c] = _parse(raw[c], c, path, integer=True)
    for c in FLOAT_COLUMNS:
        df[c] = _parse(raw[c], c, path, integer=False)
    check_rows(df, str(path))
    return df


def _parse(col: pd.Series, name: str, path: Path, *, integer: bool) -> pd.Series:
    """Text column -> int64 / float64; '' is NaN (floats only); anything else unparsable raises."""
    blank = col.str.strip() == ""
    values = pd.to_numeric(col.where(~blank, None), errors="coerce")
    bad = values.isna() & ~blank
    if integer:
        bad |= blank
    if bad.any():
        i = _first(bad)
        kind = "an integer" if integer else "a number (or empty)"
        raise DataError(f"{path}: column {name!r} row {i} = {col.iloc[i]!r} is not {kind}")
    if integer:
        if not (values == values.round()).all():
            i = _first(values != values.round())
            raise DataError(f"{path}: column {name!r} row {i} = {col.iloc[i]!r} is not an integer")
        return values.astype("int64")
    return values.astype("float64")


# ---- per-client values with their means ---------------------------------------------------------
def client_rows(
    key: RunKey,
    metric: str,
    values: Mapping[str, float],
    domains: Mapping[str, str],
    **common: Any,
) -> list[dict[str, Any]]:
    """Rows of ``values`` (client name -> value), then the unweighted mean over each domain's
    clients (client ``mean``, domain ``<d>``) and over all clients (client ``mean``, domain
    ``all``), as the paper reports "avg test acc" and per-domain accuracy (docs/paper.md#figures,
    #pitfalls). ``domains`` maps client name -> domain; ``common`` are the other row fields
    (width, ...)."""
    rows = [key.row(metric, v, client=c, domain=domains[c], **common) for c, v in values.items()]
    if not values:
        return rows
    by_domain: dict[str, list[float]] = {}
    for c, v in values.items():
        by_domain.setdefault(domains[c], []).append(float(v))
    for d, vs in by_domain.items():
        rows.append(key.row(metric, float(np.mean(vs)), client=MEAN, domain=d, **common))
    mean = float(np.mean([float(v) for v in values.values()]))
    rows.append(key.row(metric, mean, client=MEAN, domain=ALL, **common))
    return rows
