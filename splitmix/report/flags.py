"""Which runs the evaluation flagged as under-trained, and why, in words a table can print.

The evaluation decides (``splitmix.evaluate.flags``) and writes flag rows with their evidence;
this module only reads them back per run, so Table 1 and the claims check agree on which runs are
flagged and print the same reason. Runs evaluated before flags existed have no flag rows: they
count as not flagged and ``checked`` is False.
"""

from __future__ import annotations

import math

import pandas as pd

from splitmix.report.labels import width_label
from splitmix.report.load import RUN_KEYS, TEST_ROUND

FLAG_COLUMNS = (*RUN_KEYS, "checked", "flagged", "reason")


def run_flags(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run of ``rows``: ``checked`` (has flag rows), ``flagged`` and ``reason``."""
    out = []
    for key, run in rows.groupby(list(RUN_KEYS), sort=True):
        g = run[run["round"] == TEST_ROUND]
        checked = bool(g["metric"].isin(["flag_rising", "flag_near_chance"]).any())
        reasons = [r for r in (_rising(g, run), _near_chance(g)) if r]
        out.append((*key, checked, bool(reasons), "; ".join(reasons)))
    return pd.DataFrame(out, columns=list(FLAG_COLUMNS))


def _value(g: pd.DataFrame, metric: str) -> float:
    sel = g[g["metric"] == metric]["value"]
    return float(sel.iloc[0]) if len(sel) else math.nan


def _rising(g: pd.DataFrame, run: pd.DataFrame) -> str:
    """The rising flag in words; ``run`` (all rows of the run) gives the number of validations."""
    flag = g[(g["metric"] == "flag_rising") & (g["value"] == 1.0)]
    if flag.empty:
        return ""
    width = float(flag["width"].iloc[0])
    rise = g[(g["metric"] == "val_rise") & (g["width"] == width)]["value"]
    if rise.empty:
        return f"fewer than 2 validations at {width_label(width)}: cannot show learning stopped"
    curve = run[
        (run["metric"] == "val_acc")
        & (run["width"] == width)
        & (run["client"] == "mean")
        & (run["lam"].isna() | (run["lam"] == 0.0))
    ]
    # the rule compares k = min(window, n // 2) validations with the k before (evaluate.flags)
    k = min(_value(g, "flag_window"), len(curve) // 2) if len(curve) else _value(g, "flag_window")
    what = "the last validation vs the one before" if k == 1 else (
        f"best of the last {k:g} validations vs the {k:g} before"
    )  # fmt: skip
    return (
        f"validation accuracy still rising at {width_label(width)}: "
        f"{100 * float(rise.iloc[0]):+.1f} points, {what} "
        f"(margin {100 * _value(g, 'flag_rise_margin'):g} points)"
    )


def _near_chance(g: pd.DataFrame) -> str:
    flags = g[(g["metric"] == "flag_near_chance") & (g["value"] == 1.0)]
    if flags.empty:
        return ""
    acc = g[(g["metric"] == "acc") & (g["client"] == "mean") & (g["domain"] == "all")]
    parts = []
    for _, f in flags.sort_values(["width", "lam"]).iterrows():
        hit = acc[(acc["width"] == f["width"]) & _same_lam(acc["lam"], f["lam"])]["value"]
        lam = "" if math.isnan(f["lam"]) else f" λ={f['lam']:g}"
        shown = f" {100 * float(hit.iloc[0]):.1f}%" if len(hit) else ""
        parts.append(f"{width_label(float(f['width']))}{lam}{shown}")
    chance, margin = _value(g, "chance_acc"), _value(g, "flag_chance_margin")
    return (
        f"test accuracy near chance ({100 * chance:.3g}% + {100 * margin:g} points) at "
        + ", ".join(parts)
    )


def _same_lam(col: pd.Series, lam: float) -> pd.Series:
    return col.isna() if math.isnan(lam) else col == lam


def flagged_runs(flags: pd.DataFrame, keys: pd.DataFrame) -> list[str]:
    """``method seed N: reason`` of every flagged run among ``keys`` (RUN_KEYS columns)."""
    hit = flags.merge(keys[list(RUN_KEYS)].drop_duplicates(), on=list(RUN_KEYS))
    hit = hit[hit["flagged"]].sort_values(list(RUN_KEYS))
    return [f"{r.method} seed {r.seed}: {r.reason}" for r in hit.itertuples()]
