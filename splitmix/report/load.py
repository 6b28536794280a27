"""Gather evaluation rows from files and join each run's configuration onto them.

Evaluation rows (long format, one ``eval.csv`` per run) say *what was measured*; the run record
``run.json`` written beside them by training says *under which settings* (budget string,
participation, BN regime, rescaling, adversarial lambda) and *what the method is* (whether each of
its widths is a run of its own, ``one_run_per_width``). Figures such as "accuracy per budget
distribution" need the settings, and the rows do not carry them, so the loader joins a few flat
config columns onto every row of the run. A run without ``run.json`` still loads: its config columns
are missing (NaN) and the figures that need them are skipped with that reason.

Everything comes from the rows and the records, never from the live method registry and never from
a method's name: a report of old results does not change when a method's code or defaults do, and
a new method needs no report code. A record written before ``one_run_per_width`` was recorded
counts as one run per width when its ``algorithm`` entry says whether its one width violates the
budget (``budget_violating``, which only such methods record); a run without a record does not.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from splitmix.errors import DataError
from splitmix.evaluate.rows import COLUMNS as ROW_COLUMNS
from splitmix.runfolder import EVAL, ONE_RUN_PER_WIDTH, read_eval_record, read_record

RUN_KEYS = ("dataset", "split", "method", "seed")
TASK_KEYS = ("dataset", "split")
TEST_ROUND = -1  # rows with round == -1 are test-time metrics; val_acc curves carry the round
MEAN_CLIENT = "mean"  # the client value of an unweighted mean over clients
ALL_DOMAINS = ("", "all")  # domain values that mean "not one domain"
PER_WIDTH = ONE_RUN_PER_WIDTH  # column: the run's method trains each width as a run of its own
METHOD_ORDER = "method_order"  # column: rank of the method's first row in the rows read
# What the selectors keep of a run besides RUN_KEYS (constant within a run): tables and figures
# name, order and style a method's column by these, never by its name.
RUN_INFO = ("algorithm", PER_WIDTH, METHOD_ORDER)
# Config columns joined from run.json (NaN where a run has no record).
CONFIG_COLUMNS = (
    "budgets",
    "participation",
    "num_clients",
    "bn",
    "rescale_init",
    "rescale_layer",
    "train_lam",
    "min_budget",
    "run_violates_budget",
    PER_WIDTH,
)
# Joined from the evaluation record eval.json (NaN where a file has none): what its latencies were
# measured on, e.g. "AMD EPYC, 2 cores (cpu, 1 thread)".
MACHINE = "latency_machine"
EVAL_COLUMNS = (MACHINE,)
_EPS = 1e-9


def read_eval_file(path: Path) -> pd.DataFrame:
    """Read one eval file through the evaluation's own schema check (one-line DataError)."""
    from splitmix.evaluate.rows import read_rows  # imports torch: only when rows are read

    return read_rows(path)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fix dtypes so that grouping and comparisons do not depend on how a file was parsed."""
    df = df.copy()
    for col in ("dataset", "split", "method", "algorithm", "client", "domain", "metric", "unit"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    df["seed"] = pd.to_numeric(df["seed"]).astype(np.int64)
    df["round"] = pd.to_numeric(df["round"]).astype(np.int64)
    for col in ("width", "lam", "value"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df


def _budget_widths(spec: str) -> list[float]:
    try:
        from splitmix.data.budgets import parse_widths

        return parse_widths(spec)
    except Exception:
        return []


def run_config_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The flat config columns of one run record (``run.json`` as written by training)."""
    cfg = record.get("config", {}) or {}
    fed = record.get("federation", {}) or {}
    desc = record.get("algorithm", {}) or {}
    # training records every parameter, defaults included (older records: only those set; the
    # others stay unknown rather than being guessed from today's code)
    params = cfg.get("method_params") or {}
    budgets = cfg.get("budgets")
    # The budgets actually assigned are authoritative (a lognormal string can leave the smallest
    # width empty); the budget string is the fallback.
    assigned = [float(k) for k in (fed.get("budgets") or {})]
    widths = assigned or (_budget_widths(budgets) if budgets is not None else [])
    violates = desc.get("budget_violating")
    return {
        "budgets": budgets if budgets is not None else np.nan,
        "participation": cfg.get("participation", np.nan),
        "num_clients": fed.get("num_clients", np.nan),
        "bn": cfg.get("bn", np.nan),
        "rescale_init": params.get("rescale_init", np.nan),
        "rescale_layer": params.get("rescale_layer", np.nan),
        "train_lam": (cfg.get("adv") or {}).get("lam", np.nan),
        "min_budget": min(widths) if widths else np.nan,
        "run_violates_budget": bool(violates) if violates is not None else np.nan,
        PER_WIDTH: one_run_per_width(desc),
    }


def machine_label(record: dict[str, Any] | None) -> str | float:
    """``"<machine> (<device>, <n> thread(s))"`` of an evaluation record; NaN without one."""
    if not record or not record.get("machine"):
        return np.nan
    threads = record.get("threads")
    where = record.get("device", "?")
    if threads is not None:
        where += f", {threads} thread{'s' if int(threads) != 1 else ''}"
    return f"{record['machine']} ({where})"


def one_run_per_width(desc: dict[str, Any]) -> bool:
    """Whether the record's ``algorithm`` entry is that of a method training one width per run:
    its recorded capability, or for older records the per-width budget fact (module docstring)."""
    recorded = desc.get(ONE_RUN_PER_WIDTH)
    if recorded is not None:
        return bool(recorded)
    return "budget_violating" in desc


def expand(patterns: str | list[str]) -> list[Path]:
    """Files matching one or more glob patterns (``**`` recursive), duplicates removed.

    In the order of the patterns (each pattern's matches sorted): the workflow passes one file per
    run in its config's order, and the report orders its columns by the methods' first rows.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    out: dict[Path, None] = {}
    for pat in patterns:
        for p in sorted(Path(f) for f in glob.glob(str(pat), recursive=True)):
            if p.is_file():
                out.setdefault(p, None)
    return list(out)


def load_rows(patterns: str | list[str]) -> pd.DataFrame:
    """All evaluation rows matching ``patterns`` with each run's config columns joined on.

    Raises ``DataError`` when nothing matches, naming the pattern and how rows are produced.
    """
    files = expand(patterns)
    if not files:
        shown = patterns if isinstance(patterns, str) else " ".join(patterns)
        raise DataError(
            f"no evaluation rows match {shown!r}; produce them with `python -m splitmix evaluate` "
            f"(or `snakemake`) or pass --rows with the right glob, e.g. 'results/**/{EVAL}'"
        )
    frames = []
    for path in files:
        df = read_eval_file(path)
        if df.empty:
            continue
        df = _normalise(df[list(ROW_COLUMNS)])
        record = read_record(path.parent, missing_ok=True)
        cols = run_config_columns(record) if record is not None else dict.fromkeys(CONFIG_COLUMNS)
        for key in CONFIG_COLUMNS:
            value = cols.get(key)
            df[key] = np.nan if value is None else value
        df[MACHINE] = machine_label(read_eval_record(path))
        df["source"] = str(path)
        frames.append(df)
    if not frames:
        raise DataError(f"every file matching {patterns!r} is empty; rerun the evaluation")
    rows = pd.concat(frames, ignore_index=True)
    check_one_attack(rows)
    return add_derived(rows)


PGD_METRICS = ("pgd_eps", "pgd_steps", "pgd_step_size")


def check_one_attack(rows: pd.DataFrame) -> None:
    """DataError if robust accuracies were measured with different evaluation attacks (the
    ``pgd_*`` rows of each file): such numbers are not comparable in one table or figure."""
    pgd = rows[rows["metric"].isin(PGD_METRICS)]
    if pgd.empty:
        return
    settings = pgd.pivot_table(index="source", columns="metric", values="value", aggfunc="first")
    settings = settings.reindex(columns=list(PGD_METRICS)).round(9)
    first_source, first = settings.index[0], settings.iloc[0]
    for source, other in settings.iterrows():
        if not (other == first).all():
            raise DataError(
                f"robust accuracies were measured with different PGD attacks ("
                f"{_attack(first)} in {first_source}, {_attack(other)} in {source}); re-evaluate "
                "with the same --pgd-* settings (workflow.pgd)"
            )


def _attack(s: pd.Series) -> str:
    return ", ".join(f"{k.removeprefix('pgd_')} {s[k]:.6g}" for k in PGD_METRICS)


def add_derived(rows: pd.DataFrame) -> pd.DataFrame:
    """Columns every table/figure needs: one run per width (False without a record), method
    order, min budget fallback, budget violation, AT flag."""
    rows = rows.copy()
    for key in (*CONFIG_COLUMNS, *EVAL_COLUMNS):
        if key not in rows.columns:
            rows[key] = np.nan
    rows[PER_WIDTH] = [not _is_nan(v) and v is not None and bool(v) for v in rows[PER_WIDTH]]
    first_seen = {m: i for i, m in enumerate(pd.unique(rows["method"]))}
    rows[METHOD_ORDER] = rows["method"].map(first_seen).astype(np.int64)
    rows["min_budget"] = pd.to_numeric(rows["min_budget"], errors="coerce")
    # Without a run record, the smallest width any size-adaptive method evaluates in that task
    # is the smallest budget (HeteroFL/Split-Mix evaluate exactly the budget widths).
    fallback = _smallest_width_per_task(rows)
    missing = rows["min_budget"].isna()
    if missing.any():
        keys = list(zip(rows.loc[missing, "dataset"], rows.loc[missing, "split"], strict=True))
        rows.loc[missing, "min_budget"] = [fallback.get(k, np.nan) for k in keys]
    rows["violates_budget"] = _violates(rows)
    rows["is_at"] = _is_at(rows)
    return rows


def _smallest_width_per_task(rows: pd.DataFrame) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for (dataset, split), g in rows.groupby(list(TASK_KEYS), sort=False):
        adaptive = g[~g[PER_WIDTH]]["width"].dropna()
        widths = adaptive if not adaptive.empty else g["width"].dropna()
        if not widths.empty:
            out[(dataset, split)] = float(widths.min())
    return out


def _violates(rows: pd.DataFrame) -> pd.Series:
    """A one-run-per-width method (FedAvg) at a width wider than the smallest client budget trains
    clients beyond their budget; a size-adaptive method gives each client a width it can train."""
    per_width = rows[PER_WIDTH].astype(bool)
    too_wide = rows["width"] > rows["min_budget"] + _EPS
    recorded = rows["run_violates_budget"]
    known = recorded.notna() & per_width
    out = per_width & too_wide
    # The record's flag (computed from the actual clients) wins where it exists.
    out[known] = recorded[known].astype(bool)
    return out.astype(bool)


def _is_at(rows: pd.DataFrame) -> pd.Series:
    """Adversarially trained run: lambda > 0 in its run record.

    Without a record only dual-BN runs (rows with a test lambda) are recognised; PGD rows do not
    mark a run as AT because the evaluation attacks every model by default.
    """
    lam = pd.to_numeric(rows["train_lam"], errors="coerce")
    dual_runs = set(map(tuple, rows.loc[rows["lam"].notna(), list(RUN_KEYS)].values))
    guessed = pd.Series(
        [tuple(k) in dual_runs for k in rows[list(RUN_KEYS)].values], index=rows.index, dtype=bool
    )
    return (lam > 0).where(lam.notna(), guessed).astype(bool)


# ---- selectors ----------------------------------------------------------------------------------
def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def client_mean(rows: pd.DataFrame, metric: str, *, test: bool = True) -> pd.DataFrame:
    """Unweighted mean over clients of ``metric`` per run x width x lam (x round if not test).

    Uses the evaluation's own ``client == "mean"`` rows where they exist and otherwise averages the
    per-client rows, so a file that stores only one of the two still gives the paper's number.
    Returns columns RUN_KEYS + RUN_INFO, width, lam, [round,] value.
    """
    sel = rows[rows["metric"] == metric]
    sel = sel[sel["round"] == TEST_ROUND] if test else sel[sel["round"] != TEST_ROUND]
    keys = [*RUN_KEYS, *RUN_INFO, "width", "lam", "round"]
    means = sel[(sel["client"] == MEAN_CLIENT) & sel["domain"].isin(ALL_DOMAINS)]
    per_client = sel[~sel["client"].isin(("", MEAN_CLIENT))]
    per_client = per_client.groupby([*keys, "client"], dropna=False)["value"].mean().reset_index()
    computed = per_client.groupby(keys, dropna=False)["value"].mean().reset_index()
    direct = means.groupby(keys, dropna=False)["value"].mean().reset_index()
    have = set(map(_key, direct[keys].values))
    extra = computed[[_key(k) not in have for k in computed[keys].values]]
    out = pd.concat([direct, extra], ignore_index=True)
    out = out.sort_values(keys, kind="stable").reset_index(drop=True)
    return out.drop(columns="round") if test else out


def _key(values: Any) -> tuple[Any, ...]:
    """Hashable row key where NaN equals NaN (float NaN never equals itself)."""
    return tuple("nan" if _is_nan(v) else v for v in values)


def model_metric(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model-level test metric (client empty or mean) per run x width, averaged over lam rows."""
    sel = rows[
        (rows["metric"] == metric)
        & (rows["round"] == TEST_ROUND)
        & rows["client"].isin(("", MEAN_CLIENT))
    ]
    keys = [*RUN_KEYS, *RUN_INFO, "width"]
    return sel.groupby(keys, dropna=False)["value"].mean().reset_index()


def per_client(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Test-time per-client values (client is a client name): RUN_KEYS, RUN_INFO, width, lam,
    client, domain, value; repeated rows of one client (e.g. per round) are averaged."""
    sel = rows[
        (rows["metric"] == metric)
        & (rows["round"] == TEST_ROUND)
        & ~rows["client"].isin(("", MEAN_CLIENT))
    ]
    keys = [*RUN_KEYS, *RUN_INFO, "width", "lam", "client"]
    out = sel.groupby(keys, dropna=False).agg(value=("value", "mean"), domain=("domain", "first"))
    return out.reset_index()


def run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its config columns (first value; they are constant within a run)."""
    cols = [c for c in (*CONFIG_COLUMNS, "is_at", "algorithm", METHOD_ORDER) if c in rows.columns]
    return rows.groupby(list(RUN_KEYS), dropna=False)[cols].first().reset_index()


# ---- variants -----------------------------------------------------------------------------------
VARIANT_COLUMNS = ("budgets", "participation", "bn", "rescale_init", "rescale_layer")


def reference_filter(runs: pd.DataFrame, controls: list[str]) -> pd.Series:
    """Mask of runs whose ``controls`` settings are their task's usual ones.

    "Usual" = per setting, the most frequent value over the task's METHODS of every algorithm
    (methods, not runs, so a variant with more seeds does not win); ties keep every tied value and
    a setting a method does not have (NaN, e.g. FedAvg's rescaling) never excludes it. This tells a
    grid's default runs from its budget/participation/BN variants without naming conventions.
    """
    keep = pd.Series(True, index=runs.index)
    for _, g in runs.groupby(["dataset", "split"]):
        per_method = g.drop_duplicates("method")
        for col in controls:
            have = per_method[col].dropna().astype(str)
            if have.empty:
                continue
            counts = have.value_counts()
            usual = set(counts[counts == counts.max()].index)
            ok = g[col].isna() | g[col].astype(str).isin(usual)
            keep[g.index] &= ok
    return keep


def reference_methods(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the non-AT methods at their algorithm's usual settings, and the methods left out.

    Table 1 and the method-comparison figures compare methods under one setting; variants
    (other budgets, participation, BN/rescaling) have their own figures. AT runs are kept (they
    never enter Table 1, and robustness figures select them themselves).
    """
    runs = run_table(rows)
    clean = runs[~runs["is_at"].astype(bool)]
    keep = reference_filter(clean, list(VARIANT_COLUMNS))
    excluded = sorted(set(clean.loc[~keep, "method"]) - set(clean.loc[keep, "method"]))
    return rows[~rows["method"].isin(excluded)], excluded
