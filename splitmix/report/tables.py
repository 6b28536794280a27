"""Table 1: accuracy, MACs and parameters per width, per method and task (docs/paper.md#figures).

Accuracy is the mean +- sample standard deviation (ddof=1) over seeds of the unweighted mean over
clients of the test accuracy; MACs (per sample) and parameters are model-level rows averaged over
seeds (they do not vary with the seed). A method whose run record says it trains one width per
run (``one_run_per_width``, FedAvg) has one run per width, so such runs of a task are merged into
one column by stripping the ``_x<width>`` suffix of their method names. Such a width wider than the
smallest client budget trains some clients beyond their budget: it is flagged
(``budget_violating``), greyed in LaTeX, marked with a dagger in Markdown and never counts as the
best of its row.

Best of a row (``mark``): the highest budget-respecting mean is ``best`` (bold) only when it is
ahead of every other budget-respecting entry of the row by more than their seed spread
(``splitmix.report.spread``); otherwise it and every entry within the spread of it are ``tie``
(marked ≈, nothing bold). A row where some entry has a single seed has no spread and no mark.
Cells of runs the evaluation flagged as under-trained (``undertrained``) carry a double dagger and
the reasons are listed under the table.

Layout: one row per task x width, one accuracy / MACs / params column per method, so "best per
row" compares methods at the same width. Columns: the one-run-per-width families first, then the
methods in the order of their first rows (the config's order when the workflow builds the report),
so the paper's FedAvg, HeteroFL, SHeteroFL, Split-Mix order needs no method names here.
"""

from __future__ import annotations

import io
import math
import re
from fractions import Fraction

import numpy as np
import pandas as pd

from splitmix.report.flags import run_flags
from splitmix.report.load import METHOD_ORDER, PER_WIDTH, RUN_INFO, client_mean, model_metric
from splitmix.report.spread import SPREAD_DEFINITION, seed_spread

CSV_COLUMNS = (
    "dataset",
    "split",
    "width",
    "column",
    "method",
    "algorithm",
    "acc_mean",
    "acc_std",
    "n_seeds",
    "macs",
    "params",
    "budget_violating",
    "note",
    "mark",
    "undertrained",
    "flags",
    PER_WIDTH,
    METHOD_ORDER,
)
VIOLATES_NOTE = "violates budget"
DAGGER = "†"
DDAGGER = "‡"  # under-trained run
TIE = "≈"
BEST, TIED = "best", "tie"
_WIDTH_SUFFIX = re.compile(r"_x[0-9.]+$")


def column_name(method: str, one_run_per_width: bool) -> str:
    """Table column of a method: the runs of a one-run-per-width method (``<family>_x<width>``)
    share one column."""
    return _WIDTH_SUFFIX.sub("", method) if one_run_per_width else method


def width_label(width: float, tex: bool = False) -> str:
    """``x1/8`` style label (the paper's notation), exact for widths like 3/8."""
    frac = Fraction(width).limit_denominator(64)
    text = f"{frac.numerator}" if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    return f"$\\times${text}" if tex else f"×{text}"


def column_order(table: pd.DataFrame) -> list[str]:
    """Columns of ``table`` (with ``column``, PER_WIDTH and METHOD_ORDER): the one-run-per-width
    families first, then by the first row of any of a column's methods, ties by name."""
    first: dict[str, tuple[bool, int, str]] = {}
    for col, per_width, order in zip(
        table["column"], table[PER_WIDTH], table[METHOD_ORDER], strict=True
    ):
        key = (not bool(per_width), int(order), str(col))
        first[col] = min(first.get(col, key), key)
    return sorted(first, key=first.__getitem__)


def build_table1(rows: pd.DataFrame) -> pd.DataFrame:
    """Long-format Table 1 (CSV_COLUMNS), one row per task x width x method, sorted."""
    clean = rows[~rows["is_at"]]
    acc = client_mean(clean, "acc")
    # Dual-BN rows carry a test lambda; the clean benchmark is lambda = 0 (clean BN).
    acc = acc[acc["lam"].isna() | (acc["lam"] == 0.0)]
    keys = ["dataset", "split", "method", *RUN_INFO, "width"]
    per_seed = acc.groupby([*keys, "seed"], dropna=False)["value"].mean().reset_index()
    table = (
        per_seed.groupby(keys)["value"]
        .agg(acc_mean="mean", acc_std="std", n_seeds="count")
        .reset_index()
    )
    for metric in ("macs", "params"):
        vals = model_metric(clean, metric).groupby(keys)["value"].mean().rename(metric)
        table = table.merge(vals.reset_index(), on=keys, how="left")
    viol = clean.groupby(keys)["violates_budget"].any().rename("budget_violating").reset_index()
    table = table.merge(viol, on=keys, how="left")
    table["budget_violating"] = table["budget_violating"].fillna(False).astype(bool)
    table["note"] = np.where(table["budget_violating"], VIOLATES_NOTE, "")
    table["column"] = [
        column_name(m, p) for m, p in zip(table["method"], table[PER_WIDTH], strict=True)
    ]
    table = _add_flags(table, clean)
    table["mark"] = _marks(table)
    table = table.sort_values(["dataset", "split", "width", "column", "method"], kind="stable")
    return table[list(CSV_COLUMNS)].reset_index(drop=True)


def _add_flags(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``undertrained`` (any seed's run flagged) and ``flags`` ("seed N: reason; ...") per cell."""
    flags = run_flags(rows)
    flags = flags[flags["flagged"]]
    text: dict[tuple[str, str, str], list[str]] = {}
    for r in flags.itertuples():
        text.setdefault((r.dataset, r.split, r.method), []).append(f"seed {r.seed}: {r.reason}")
    keys = list(zip(table["dataset"], table["split"], table["method"], strict=True))
    table["flags"] = ["; ".join(text.get(k, [])) for k in keys]
    table["undertrained"] = table["flags"] != ""
    return table


def _marks(table: pd.DataFrame) -> pd.Series:
    """``best`` / ``tie`` / "" per cell by the rule of the module docstring."""
    marks = pd.Series("", index=table.index, dtype=object)
    eligible = table[~table["budget_violating"] & table["acc_mean"].notna()]
    for _, row in eligible.groupby(["dataset", "split", "width"]):
        if len(row) < 2 or row["acc_std"].isna().any():
            continue  # nothing to beat, or no spread to beat it by
        top = row.loc[row["acc_mean"].idxmax()]
        gaps = {
            i: (top["acc_mean"] - c["acc_mean"], seed_spread(top["acc_std"], c["acc_std"]))
            for i, c in row.iterrows()
            if i != top.name
        }
        tied = [i for i, (gap, spread) in gaps.items() if gap <= spread]
        if not tied:
            marks[top.name] = BEST
        else:
            marks[[top.name, *tied]] = TIED
    return marks


def to_csv(table: pd.DataFrame) -> str:
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.8g", lineterminator="\n")
    return buf.getvalue()


# ---- cells --------------------------------------------------------------------------------------
def _acc_text(mean: float, std: float, tex: bool) -> str:
    pm = " $\\pm$ " if tex else " ± "
    text = f"{100 * mean:.2f}"
    return text if math.isnan(std) else f"{text}{pm}{100 * std:.2f}"


def _sig(value: float) -> str:
    """Three significant digits without scientific notation for the magnitudes in this table."""
    if math.isnan(value):
        return "–"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value))))) if value else 0
    return f"{value:.{digits}f}"


def _grid(table: pd.DataFrame, dataset: str, split: str) -> tuple[list[float], list[str]]:
    sub = table[(table["dataset"] == dataset) & (table["split"] == split)]
    return sorted(sub["width"].unique()), column_order(sub)


def _cell(table: pd.DataFrame, dataset: str, split: str, width: float, col: str) -> pd.Series:
    hit = table[
        (table["dataset"] == dataset)
        & (table["split"] == split)
        & (table["width"] == width)
        & (table["column"] == col)
    ]
    return hit.iloc[0] if len(hit) else None


def _row_cells(
    table: pd.DataFrame, dataset: str, split: str, width: float, cols: list[str], tex: bool
) -> tuple[list[str], list[str], list[str]]:
    cells = [_cell(table, dataset, split, width, c) for c in cols]
    acc, macs, params = [], [], []
    for c in cells:
        if c is None:
            acc.append("–")
            macs.append("–")
            params.append("–")
            continue
        acc.append(_acc_cell(c, tex))
        macs.append(_sig(c["macs"] / 1e6))
        params.append(_sig(c["params"] / 1e6))
    return acc, macs, params


def _acc_cell(c: pd.Series, tex: bool) -> str:
    """Accuracy text with its marks: bold best, ≈ tie, † violates budget, ‡ under-trained."""
    text = _acc_text(c["acc_mean"], c["acc_std"], tex)
    if c["mark"] == BEST:
        text = f"\\textbf{{{text}}}" if tex else f"**{text}**"
    elif c["mark"] == TIED:
        text += " $\\approx$" if tex else f" {TIE}"
    if c["budget_violating"]:
        text = f"\\textcolor{{gray}}{{{text}$^\\dagger$}}" if tex else f"{text} {DAGGER}"
    if c["undertrained"]:
        text += "$^\\ddagger$" if tex else f" {DDAGGER}"
    return text


def flag_notes(table: pd.DataFrame, dataset: str, split: str) -> list[str]:
    """``method: seed N: reason`` of every flagged method of one task (each method once)."""
    sub = table[(table["dataset"] == dataset) & (table["split"] == split) & table["undertrained"]]
    sub = sub.drop_duplicates("method").sort_values("method")
    return [f"{r.method}: {r.flags}" for r in sub.itertuples()]


def tasks(table: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(table["dataset"], table["split"], strict=True)))


# ---- Markdown -----------------------------------------------------------------------------------
MD_LEGEND = (
    "Accuracy: mean ± std over seeds of the unweighted mean over clients of the test accuracy [%]; "
    "**bold** = best in the row among budget-respecting methods, ahead of each of them by more "
    f"than the seed spread ({SPREAD_DEFINITION}); {TIE} = tied for best: within the seed spread "
    "of the row's best mean, so nothing is bold; no mark in a row where a method has one seed. "
    "MACs: millions of multiply-accumulates per sample [M MAC/sample]. Params: millions of "
    f"parameters [M, a count, not MB]. {DAGGER} = {VIOLATES_NOTE}: FedAvg trained at a width "
    f"wider than the smallest client budget. {DDAGGER} = under-trained: the evaluation flagged a "
    "run of this cell (validation accuracy still rising at the end, or test accuracy near "
    "chance); its numbers do not show what the method can do. The reasons follow each table."
)


def to_markdown(table: pd.DataFrame) -> str:
    out = ["# Table 1: accuracy, MACs and parameters per width", "", MD_LEGEND, ""]
    for dataset, split in tasks(table):
        widths, cols = _grid(table, dataset, split)
        header = (
            ["Width"]
            + [f"{c} acc [%]" for c in cols]
            + [f"{c} MACs [M]" for c in cols]
            + [f"{c} params [M]" for c in cols]
        )
        out += [f"## {dataset} / {split}", ""]
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join([":--"] + ["--:"] * (len(header) - 1)) + "|")
        for w in widths:
            acc, macs, params = _row_cells(table, dataset, split, w, cols, tex=False)
            out.append("| " + " | ".join([width_label(w), *acc, *macs, *params]) + " |")
        out.append("")
        notes = flag_notes(table, dataset, split)
        if notes:
            out += [f"{DDAGGER} Under-trained runs:", ""]
            out += [f"- {n}" for n in notes]
            out.append("")
    return "\n".join(out)


# ---- LaTeX --------------------------------------------------------------------------------------
def _tex_escape(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text)


def to_latex(table: pd.DataFrame) -> str:
    out = [
        "% Table 1, generated by `python -m splitmix report` from evaluation rows.",
        "% Needs \\usepackage{booktabs} and \\usepackage{xcolor}.",
        "% Accuracy: mean $\\pm$ std over seeds of the client-mean test accuracy [%]; bold = best",
        "% budget-respecting entry of the row, ahead of each other one by more than the seed",
        "% spread (the larger of the two std over seeds); $\\approx$ = tied for best within it;",
        "% grey with a dagger = FedAvg wider than the smallest client budget (violates budget);",
        "% double dagger = under-trained run (listed under the table). MACs in millions per",
        "% sample; params in millions.",
    ]
    for dataset, split in tasks(table):
        widths, cols = _grid(table, dataset, split)
        n = len(cols)
        names = " & ".join(_tex_escape(c) for c in cols)
        out += [
            "\\begin{table}[t]",
            "\\centering\\small",
            f"\\caption{{{_tex_escape(dataset)} / {_tex_escape(split)}: accuracy, MACs and "
            "parameters per width.}",
            f"\\label{{tab:table1-{_tex_escape(dataset)}-{_tex_escape(split)}}}",
            "\\begin{tabular}{l" + "c" * (3 * n) + "}",
            "\\toprule",
            f" & \\multicolumn{{{n}}}{{c}}{{Accuracy [\\%]}} & \\multicolumn{{{n}}}{{c}}"
            f"{{MACs [M/sample]}} & \\multicolumn{{{n}}}{{c}}{{Params [M]}} \\\\",
            f"\\cmidrule(lr){{2-{n + 1}}}\\cmidrule(lr){{{n + 2}-{2 * n + 1}}}"
            f"\\cmidrule(lr){{{2 * n + 2}-{3 * n + 1}}}",
            f"Width & {names} & {names} & {names} \\\\",
            "\\midrule",
        ]
        for w in widths:
            acc, macs, params = _row_cells(table, dataset, split, w, cols, tex=True)
            out.append(" & ".join([width_label(w, tex=True), *acc, *macs, *params]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        notes = flag_notes(table, dataset, split)
        if notes:
            text = "; ".join(_tex_escape(n) for n in notes)
            out.append(f"\\par\\footnotesize $^\\ddagger$ Under-trained runs: {text}")
        out += ["\\end{table}", ""]
    return "\n".join(out)
