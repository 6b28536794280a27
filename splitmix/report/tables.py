"""Table 1: accuracy, cost, latency and storage per width, per method and task
(docs/paper.md#figures, docs/evaluation.md#deployment).

Accuracy is the mean +- sample standard deviation (ddof=1) over seeds of the unweighted mean over
clients of the test accuracy; MACs (per sample), parameters, the exported file's bytes and the
measured latencies are model-level rows averaged over seeds. A method whose run record says it
trains one width per run (``one_run_per_width``, FedAvg) has one run per width, so such runs of a
task are merged into one column by stripping the ``_x<width>`` suffix of their method names. Such
a width wider than the smallest client budget trains some clients beyond their budget: it is
flagged (``budget_violating``), greyed in LaTeX, marked with a dagger in Markdown and never counts
as the best of its width.

Best of a width (``mark``), among the budget-respecting methods that have at least two seeds
(the others have no seed spread to compare by): the highest mean is ``best`` (bold) only when it
is ahead of every other such entry by more than their seed spread (``splitmix.report.spread``);
otherwise it and every entry within the spread of it are ``tie`` (marked ≈, nothing bold). Cells
of runs the evaluation flagged as under-trained (``undertrained``) carry a double dagger and the
reasons are listed under the table.

Storage to serve every width (``serve_all_bytes``) belongs to a column, not a width: the bytes a
server or device stores to hand out every width the method offers (Split-Mix: its bases once; a
nested method: its widest model; DepthFL: its deepest; a one-run-per-width family: one model per
width, so the sum over its runs).

Layout, as the paper's: one row per task x width x method, grouped by width, with accuracy, MACs,
parameters, latency and file size as column groups; then a storage table per task. Columns of a
width group: the one-run-per-width families first, then the methods in the order of their first
rows (the config's order when the workflow builds the report), so the paper's FedAvg, HeteroFL,
SHeteroFL, Split-Mix order needs no method names here.
"""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pandas as pd

from splitmix.report.flags import run_flags
from splitmix.report.labels import width_label
from splitmix.report.load import (
    MACHINE,
    METHOD_ORDER,
    PER_WIDTH,
    RUN_INFO,
    RUN_KEYS,
    TEST_ROUND,
    client_mean,
    model_metric,
)
from splitmix.report.spread import SPREAD_DEFINITION, seed_spread

__all__ = ["build_table1", "column_name", "column_order", "to_csv", "to_latex", "to_markdown",
           "width_label"]  # fmt: skip

MODEL_COLUMNS = (
    "macs",
    "params",
    "latency_b1",
    "latency_bn",
    "latency_b1_plain",
    "latency_bn_plain",
    "export_bytes",
)
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
    *MODEL_COLUMNS,
    "serve_all_bytes",
    "latency_batch",
    MACHINE,
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
MIN_SEEDS = 2  # a method needs a seed spread to take part in the best-of-width mark
_WIDTH_SUFFIX = re.compile(r"_x[0-9.]+$")


def column_name(method: str, one_run_per_width: bool) -> str:
    """Table column of a method: the runs of a one-run-per-width method (``<family>_x<width>``)
    share one column."""
    return _WIDTH_SUFFIX.sub("", method) if one_run_per_width else method


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


# ---- building -----------------------------------------------------------------------------------
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
    for metric in MODEL_COLUMNS:
        vals = model_metric(clean, metric).groupby(keys)["value"].mean().rename(metric)
        table = table.merge(vals.reset_index(), on=keys, how="left")
    viol = clean.groupby(keys)["violates_budget"].any().rename("budget_violating").reset_index()
    table = table.merge(viol, on=keys, how="left")
    table["budget_violating"] = table["budget_violating"].fillna(False).astype(bool)
    table["note"] = np.where(table["budget_violating"], VIOLATES_NOTE, "")
    table["column"] = [
        column_name(m, p) for m, p in zip(table["method"], table[PER_WIDTH], strict=True)
    ]
    table = _add_run_facts(table, clean)
    table = _add_flags(table, clean)
    table["mark"] = _marks(table)
    table = table.sort_values(["dataset", "split", "width", "column", "method"], kind="stable")
    return table[list(CSV_COLUMNS)].reset_index(drop=True)


def _run_value(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Run-level ``metric`` (width and client empty) per task x method, mean over seeds."""
    sel = rows[(rows["metric"] == metric) & (rows["round"] == TEST_ROUND) & rows["width"].isna()]
    sel = sel[sel["client"] == ""]
    return sel.groupby(["dataset", "split", "method"])["value"].mean()


def _add_run_facts(table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``serve_all_bytes`` per column (summed over a one-run-per-width family's runs, whose
    widths are separate models), ``latency_batch`` and the machine(s) of the latencies."""
    stored = _run_value(rows, "serve_all_bytes")
    per_method = [
        stored.get((d, s, m), math.nan)
        for d, s, m in zip(table["dataset"], table["split"], table["method"], strict=True)
    ]
    table["serve_all_bytes"] = per_method
    family = table.drop_duplicates(["dataset", "split", "column", "method"])
    # a family whose every run has the number stores their sum; a gap leaves it unknown
    total = family.groupby(["dataset", "split", "column"])["serve_all_bytes"].agg(
        lambda v: v.sum() if v.notna().all() else math.nan
    )
    table["serve_all_bytes"] = [
        total.get((d, s, c), math.nan)
        for d, s, c in zip(table["dataset"], table["split"], table["column"], strict=True)
    ]
    batch = _run_value(rows, "latency_batch")
    table["latency_batch"] = [
        batch.get((d, s, m), math.nan)
        for d, s, m in zip(table["dataset"], table["split"], table["method"], strict=True)
    ]
    machines = rows.groupby(list(RUN_KEYS[:3]))[MACHINE].agg(_machines)
    table[MACHINE] = [
        machines.get((d, s, m), "")
        for d, s, m in zip(table["dataset"], table["split"], table["method"], strict=True)
    ]
    return table


def _machines(values: pd.Series) -> str:
    return "; ".join(sorted({str(v) for v in values.dropna()}))


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
    eligible = table[
        ~table["budget_violating"]
        & table["acc_mean"].notna()
        & (table["n_seeds"] >= MIN_SEEDS)
        & table["acc_std"].notna()
    ]
    for _, row in eligible.groupby(["dataset", "split", "width"]):
        if len(row) < 2:
            continue  # nothing to beat
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
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value))))) if value else 0
    return f"{value:.{digits}f}"


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


def _row_cells(c: pd.Series, tex: bool) -> list[str]:
    """Width, method, accuracy, seeds, MACs [M], params [M], latencies [ms], file [MB]."""
    return [
        width_label(c["width"], tex=tex),
        _tex_escape(c["column"]) if tex else c["column"],
        _acc_cell(c, tex),
        str(int(c["n_seeds"])),
        _sig(c["macs"] / 1e6),
        _sig(c["params"] / 1e6),
        _sig(c["latency_b1"] * 1e3),
        _sig(c["latency_bn"] * 1e3),
        _sig(c["export_bytes"] / 1e6),
    ]


def _task(table: pd.DataFrame, dataset: str, split: str) -> pd.DataFrame:
    """The rows of one task in display order: by width, then column order, then method."""
    sub = table[(table["dataset"] == dataset) & (table["split"] == split)].copy()
    rank = {c: i for i, c in enumerate(column_order(sub))}
    sub["_rank"] = sub["column"].map(rank)
    return sub.sort_values(["width", "_rank", "method"], kind="stable")


def _latency_batch(sub: pd.DataFrame) -> str:
    batch = sub["latency_batch"].dropna()
    return f"{int(batch.iloc[0])}" if len(batch) and batch.nunique() == 1 else "N"


def machine_note(sub: pd.DataFrame) -> str:
    """Where the latencies of a task were measured, in one sentence."""
    machines = sorted({m for ms in sub[MACHINE] for m in ms.split("; ") if m})
    if not machines:
        return "Latency: not measured (rows evaluated without it, or before it existed)."
    if len(machines) == 1:
        return (
            f"Latency: median seconds per sample of the deployed model, measured on {machines[0]}."
        )
    return (
        "Latency: measured on several machines, so the columns are not comparable across "
        f"methods: {'; '.join(machines)}."
    )


def storage_rows(sub: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(column, what it stores, bytes) per column of a task that has ``serve_all_bytes``."""
    out = []
    for col in column_order(sub):
        g = sub[sub["column"] == col]
        value = g["serve_all_bytes"].dropna()
        if value.empty:
            continue
        n = g["method"].nunique()
        per_width = bool(g[PER_WIDTH].iloc[0])
        what = f"{n} models, one per width" if per_width else "one model for every width"
        out.append((col, what, float(value.iloc[0])))
    return out


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
    "**bold** = best at its width among the budget-respecting methods with at least two seeds, "
    f"ahead of each of them by more than the seed spread ({SPREAD_DEFINITION}); {TIE} = tied for "
    "best: within the seed spread of the best mean, so nothing is bold; a method with one seed "
    "has no spread and takes no part in the marks. MACs: millions of multiply-accumulates per "
    "sample [M MAC/sample]. Params: millions of parameters [M, a count, not MB]. Latency: measured "
    "median time per sample of the model `python -m splitmix export` writes (BN statistics "
    "fixed), at batch 1 [ms] and at a larger batch [ms per sample]; a measurement on the machine "
    "named above each table, never a count of operations. File: bytes of that TorchScript file "
    f"[MB]. {DAGGER} = {VIOLATES_NOTE}: FedAvg trained at a width wider than the smallest client "
    f"budget. {DDAGGER} = under-trained: the evaluation flagged a run of this cell (validation "
    "accuracy still rising at the end, or test accuracy near chance); its numbers do not show "
    "what the method can do. The reasons follow each table."
)
STORAGE_LEGEND = (
    "Storage to serve every width: the bytes of tensors a server or device keeps to hand out "
    "every width a method offers, each tensor element once [MB]."
)


def _md_table(header: list[str], align: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def to_markdown(table: pd.DataFrame) -> str:
    out = ["# Table 1: accuracy, cost, latency and storage per width", "", MD_LEGEND, ""]
    for dataset, split in tasks(table):
        sub = _task(table, dataset, split)
        n = _latency_batch(sub)
        header = ["Width", "Method", "Acc [%]", "Seeds", "MACs [M]", "Params [M]",
                  "Latency b1 [ms]", f"Latency b{n} [ms/sample]", "File [MB]"]  # fmt: skip
        body = [_row_cells(c, tex=False) for _, c in sub.iterrows()]
        out += [f"## {dataset} / {split}", "", machine_note(sub), ""]
        out += _md_table(header, [":--", ":--"] + ["--:"] * (len(header) - 2), body)
        out.append("")
        stored = storage_rows(sub)
        if stored:
            least = min(b for _, _, b in stored)
            body = [[c, what, _sig(b / 1e6), f"{b / least:.1f}×"] for c, what, b in stored]
            out += [STORAGE_LEGEND, ""]
            out += _md_table(["Method", "Stores", "Stored [MB]", "vs the least"],
                             [":--", ":--", "--:", "--:"], body)  # fmt: skip
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
        "% budget-respecting entry of its width among the methods with two or more seeds, ahead",
        "% of each other one by more than the seed spread (the larger of the two std over seeds);",
        "% $\\approx$ = tied for best within it; grey with a dagger = FedAvg wider than the",
        "% smallest client budget (violates budget); double dagger = under-trained run (listed",
        "% under the table). MACs in millions per sample; params in millions; latency measured",
        "% (median per sample, BN statistics fixed) on the machine named in the caption; file =",
        "% bytes of the exported TorchScript model.",
    ]
    for dataset, split in tasks(table):
        sub = _task(table, dataset, split)
        n = _latency_batch(sub)
        name = f"{_tex_escape(dataset)} / {_tex_escape(split)}"
        out += [
            "\\begin{table}[t]",
            "\\centering\\small",
            f"\\caption{{{name}: accuracy, cost, latency and storage per width. "
            f"{_tex_escape(machine_note(sub))}}}",
            f"\\label{{tab:table1-{_tex_escape(dataset)}-{_tex_escape(split)}}}",
            "\\begin{tabular}{llrrrrrrr}",
            "\\toprule",
            " & & \\multicolumn{2}{c}{Accuracy} & \\multicolumn{2}{c}{Cost} & "
            "\\multicolumn{2}{c}{Latency} & \\\\",
            "\\cmidrule(lr){3-4}\\cmidrule(lr){5-6}\\cmidrule(lr){7-8}",
            f"Width & Method & [\\%] & seeds & MACs [M] & params [M] & b1 [ms] & b{n} [ms] & "
            "file [MB] \\\\",
            "\\midrule",
        ]
        for _, c in sub.iterrows():
            out.append(" & ".join(_row_cells(c, tex=True)) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        stored = storage_rows(sub)
        if stored:
            parts = "; ".join(
                f"{_tex_escape(c)} {_sig(b / 1e6)} MB ({what})" for c, what, b in stored
            )
            out.append(f"\\par\\footnotesize Storage to serve every width: {parts}.")
        notes = flag_notes(table, dataset, split)
        if notes:
            text = "; ".join(_tex_escape(n) for n in notes)
            out.append(f"\\par\\footnotesize $^\\ddagger$ Under-trained runs: {text}")
        out += ["\\end{table}", ""]
    return "\n".join(out)
