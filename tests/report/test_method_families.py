"""The report groups, flags and orders methods by what their run records say, never by name: a
made-up method that records ``one_run_per_width: true`` is treated exactly as FedAvg is."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitmix.report.figures import _client_width, clean_acc, method_colors
from splitmix.report.load import load_rows
from splitmix.report.tables import build_table1, column_order, to_markdown

from .synthetic import Spec, markdown_cells, run_dir, write_runs

GLOB = "results/**/eval.csv"
NEW_WIDTHS = (0.125, 0.5, 1.0)  # budgets 8-4-2-1: the smallest client budget is 1/8


def _specs() -> list[Spec]:
    """Made-up names, sorted on disk as alpha, tinyavg_x*, zeta: one-run-per-width ``tinyavg``
    (one run per width) and two size-adaptive methods at every width."""
    specs = [
        Spec("digits", f"tinyavg_x{w:g}", "tinyavg", seed, (w,), one_run_per_width=True)
        for w in NEW_WIDTHS
        for seed in (1, 2)
    ]
    for name in ("zeta", "alpha"):
        specs += [Spec("digits", name, name, seed, NEW_WIDTHS) for seed in (1, 2)]
    return specs


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[Spec]]:
    root = tmp_path_factory.mktemp("families")
    specs = _specs()
    write_runs(root, specs)
    return root, specs


def test_a_recorded_one_run_per_width_method_gets_one_column_and_budget_flags(written):
    root, _ = written
    rows = load_rows(str(root / GLOB))
    table = build_table1(rows)
    family = table[table["column"] == "tinyavg"]
    assert sorted(family["method"]) == [f"tinyavg_x{w:g}" for w in sorted(NEW_WIDTHS)]
    # wider than the smallest budget (1/8) trains clients beyond their budget; 1/8 does not
    flagged = dict(zip(family["width"], family["budget_violating"], strict=True))
    assert flagged == {0.125: False, 0.5: True, 1.0: True}
    assert not table.loc[table["column"] != "tinyavg", "budget_violating"].any()
    # a violating cell never competes for the row's mark
    assert (table.loc[table["budget_violating"], "mark"] == "").all()
    md = to_markdown(table)
    assert md.count("†") == 2 + 1  # the two violating cells + the legend
    # one-run-per-width family first, then the methods in the order of their first rows
    assert column_order(table) == ["tinyavg", "alpha", "zeta"]
    assert [m for (w, m) in markdown_cells(md) if w == "×1/2"] == ["tinyavg", "alpha", "zeta"]


def test_column_order_follows_the_order_the_rows_are_given_in(written):
    root, specs = written
    # the workflow passes one file per run, in its config's order: zeta before alpha here
    order = ["zeta", "tinyavg_x1", "tinyavg_x0.125", "tinyavg_x0.5", "alpha"]
    files = [str(run_dir(root, s) / "eval.csv") for m in order for s in specs if s.method == m]
    table = build_table1(load_rows(files))
    assert column_order(table) == ["tinyavg", "zeta", "alpha"]
    colors = method_colors(load_rows(files))
    assert list(colors)[:3] == ["tinyavg", "zeta", "alpha"]  # algorithms first, same order


def test_client_statistics_show_the_widest_budget_respecting_width_of_the_family(written):
    root, _ = written
    rows = load_rows(str(root / GLOB))
    shown = _client_width(clean_acc(rows), rows)
    assert shown == {"tinyavg": 0.125, "alpha": 1.0, "zeta": 1.0}


def test_the_same_runs_without_the_capability_are_separate_columns(tmp_path):
    # the name alone (a `_x<width>` suffix) groups nothing: only the record does
    specs = [
        Spec("digits", f"tinyavg_x{w:g}", "tinyavg", 1, (w,), one_run_per_width=False)
        for w in NEW_WIDTHS
    ]
    write_runs(tmp_path, specs)
    table = build_table1(load_rows(str(tmp_path / GLOB)))
    assert sorted(table["column"]) == sorted(s.method for s in specs)
    assert not table["budget_violating"].any()
