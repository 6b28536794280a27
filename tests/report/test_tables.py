"""Table 1 and the row loader, checked against numbers recomputed by hand from synthetic rows."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from splitmix.errors import DataError
from splitmix.evaluate.flags import FlagRule, flag_rows
from splitmix.evaluate.rows import RunKey, to_frame
from splitmix.report.flags import run_flags
from splitmix.report.load import load_rows, reference_methods
from splitmix.report.spread import seed_spread, seed_std
from splitmix.report.tables import build_table1, to_latex, to_markdown, width_label

from .synthetic import (
    WIDTHS,
    Spec,
    at_specs,
    main_specs,
    markdown_cells,
    run_dir,
    variant_specs,
    write_runs,
)

GLOB = "results/**/eval.csv"


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("grid")
    specs = (
        main_specs(("digits",), seeds=(1, 2, 3))
        + at_specs("digits")
        + variant_specs("digits", seeds=(1,))
    )
    written = write_runs(root, specs)
    rows = load_rows(str(root / GLOB))
    return root, written, rows


def _by_hand(written: pd.DataFrame, method: str, width: float) -> tuple[float, float, int]:
    """Per seed: plain mean of the per-client test acc rows; then mean and ddof=1 std."""
    r = written[
        (written["method"] == method)
        & (written["metric"] == "acc")
        & (written["round"] == -1)
        & (written["width"] == width)
        & ~written["client"].isin(["mean", ""])
    ]
    per_seed = [float(np.mean(g["value"].to_numpy())) for _, g in r.groupby("seed")]
    return float(np.mean(per_seed)), float(np.std(per_seed, ddof=1)), len(per_seed)


def test_table1_numbers_equal_hand_computation(grid):
    _, written, rows = grid
    main, _ = reference_methods(rows)
    table = build_table1(main)
    cases = [(f"fedavg_x{w:g}", w) for w in WIDTHS] + [
        (m, w) for m in ("sheterofl", "splitmix") for w in WIDTHS
    ]
    assert len(table) == len(cases)
    for method, width in cases:
        hit = table[(table["method"] == method) & (table["width"] == width)]
        assert len(hit) == 1, (method, width)
        mean, std, n = _by_hand(written, method, width)
        assert hit["acc_mean"].iloc[0] == pytest.approx(mean, abs=1e-12)
        assert hit["acc_std"].iloc[0] == pytest.approx(std, abs=1e-12)
        assert hit["n_seeds"].iloc[0] == n == 3
        macs = written[(written["method"] == method) & (written["metric"] == "macs")]
        macs = macs[(macs["width"] == width) & (macs["client"] == "")]["value"].mean()
        assert hit["macs"].iloc[0] == pytest.approx(macs)


def test_budget_violation_flags_only_fedavg_wider_than_min_budget(grid):
    _, _, rows = grid
    table = build_table1(reference_methods(rows)[0])
    flagged = table[table["budget_violating"]]
    # budgets 8-4-2-1: min budget 1/8, so FedAvg x1/4, x1/2, x1 violate; nothing else does
    assert sorted(zip(flagged["method"], flagged["width"], strict=True)) == [
        ("fedavg_x0.25", 0.25),
        ("fedavg_x0.5", 0.5),
        ("fedavg_x1", 1.0),
    ]
    assert (flagged["note"] == "violates budget").all()
    md, tex = to_markdown(table), to_latex(table)
    assert md.count("†") == 3 + 1  # three cells + the legend
    assert tex.count("\\textcolor{gray}") == 3
    x18 = next(line for line in md.splitlines() if line.startswith("| ×1/8 "))
    assert "†" not in x18


def test_markdown_and_latex_list_every_method_and_width(grid):
    _, _, rows = grid
    table = build_table1(reference_methods(rows)[0])
    md, tex = to_markdown(table), to_latex(table)
    cells = markdown_cells(md)
    for col in ("fedavg", "sheterofl", "splitmix"):
        for w in WIDTHS:
            assert (width_label(w), col) in cells
            assert re.search(rf"{re.escape(width_label(w, tex=True))} & {col} &", tex)
    # a width's rows, in the column order: the one-run-per-width family first
    order = [m for (w, m) in cells if w == width_label(0.125)]
    assert order == ["fedavg", "sheterofl", "splitmix"]


def _expected_mark(sub: pd.DataFrame) -> dict[str, str]:
    """The bold/tie rule recomputed from a row's numbers: best only if ahead of every other
    budget-respecting entry by more than max(std of the two); else it and those within tie."""
    ok = sub[~sub["budget_violating"]]
    top = ok.loc[ok["acc_mean"].idxmax()]
    within = [
        c["column"]
        for _, c in ok.iterrows()
        if c["column"] != top["column"]
        and top["acc_mean"] - c["acc_mean"] <= max(top["acc_std"], c["acc_std"])
    ]
    if not within:
        return {top["column"]: "best"}
    return dict.fromkeys([top["column"], *within], "tie")


def test_bold_and_tie_marks_follow_the_seed_spread_rule(grid):
    _, _, rows = grid
    table = build_table1(reference_methods(rows)[0])
    md = to_markdown(table)
    cols = ["fedavg", "sheterofl", "splitmix"]
    seen = set()
    for w in WIDTHS:
        sub = table[table["width"] == w]
        expected = _expected_mark(sub)
        got = {c: m for c, m in zip(sub["column"], sub["mark"], strict=True) if m}
        assert got == expected, w
        seen |= set(expected.values())
        cells = markdown_cells(md)
        for col in cols:
            cell = cells[(width_label(w), col)]["Acc [%]"]
            assert cell.startswith("**") == (expected.get(col) == "best"), (w, col)
            assert ("≈" in cell) == (expected.get(col) == "tie"), (w, col)
    assert seen == {"best", "tie"}  # this grid has both kinds of rows


def _two_seed_specs(accs: dict[str, tuple[float, float]], width: float = 0.125) -> list[Spec]:
    """One run per method and seed with an exact accuracy at ``width``."""
    return [
        Spec("digits", m, m.split("_")[0], seed, (width,), acc={width: a[seed - 1]})
        for m, a in accs.items()
        for seed in (1, 2)
    ]


def test_a_lead_larger_than_the_spread_is_bold_and_a_smaller_one_is_a_tie(tmp_path):
    # splitmix 80/82 (std 1.41), sheterofl 70/72: 10 points ahead -> bold
    write_runs(tmp_path, _two_seed_specs({"splitmix": (0.80, 0.82), "sheterofl": (0.70, 0.72)}))
    table = build_table1(load_rows(str(tmp_path / GLOB))).set_index("column")
    assert table["mark"].to_dict() == {"sheterofl": "", "splitmix": "best"}
    cells = markdown_cells(to_markdown(table.reset_index()))
    assert cells[("×1/8", "sheterofl")]["Acc [%]"] == "71.00 ± 1.41"
    assert cells[("×1/8", "splitmix")]["Acc [%]"] == "**81.00 ± 1.41**"
    # heterofl 79/81: 1 point behind, inside the spread 1.41 -> both tied, nothing bold
    write_runs(tmp_path, _two_seed_specs({"heterofl": (0.79, 0.81)}))
    table = build_table1(load_rows(str(tmp_path / GLOB)))
    marks = dict(zip(table["column"], table["mark"], strict=True))
    assert marks == {"heterofl": "tie", "sheterofl": "", "splitmix": "tie"}
    md = to_markdown(table)
    assert "**" not in md.split("## ")[1]
    accs = {m: c["Acc [%]"] for (_, m), c in markdown_cells(md).items()}
    assert accs == {"heterofl": "80.00 ± 1.41 ≈", "sheterofl": "71.00 ± 1.41",
                    "splitmix": "81.00 ± 1.41 ≈"}  # fmt: skip
    assert "81.00 $\\pm$ 1.41 $\\approx$" in to_latex(table) and "textbf" not in to_latex(table)


def test_one_seed_gives_no_spread_and_no_mark(tmp_path):
    specs = _two_seed_specs({"splitmix": (0.9, 0.9), "sheterofl": (0.1, 0.1)})
    write_runs(tmp_path, [s for s in specs if s.seed == 1])
    table = build_table1(load_rows(str(tmp_path / GLOB)))
    assert (table["mark"] == "").all()
    assert "**" not in to_markdown(table).split("## ")[1]


def test_under_trained_cells_carry_a_double_dagger_and_the_reason(tmp_path):
    specs = _two_seed_specs({"splitmix": (0.80, 0.82), "sheterofl": (0.12, 0.30)})
    for s in specs:
        s.flags, s.curve = True, "plateau"
    specs[-1].curve = "rising"  # sheterofl seed 2 was still climbing
    write_runs(tmp_path, specs)
    table = build_table1(load_rows(str(tmp_path / GLOB))).set_index("column")
    assert table["undertrained"].to_dict() == {"sheterofl": True, "splitmix": False}
    reasons = table.loc["sheterofl", "flags"]
    assert reasons.startswith("seed 1: test accuracy near chance (10% + 5 points) at ×1/8 12.0%")
    assert "seed 2: validation accuracy still rising at ×1/8: +" in reasons
    assert reasons.endswith("best of the last 3 validations vs the 3 before (margin 2 points)")
    md = to_markdown(table.reset_index())
    cells = markdown_cells(md)  # flagged cells still compete
    assert cells[("×1/8", "sheterofl")]["Acc [%]"] == "21.00 ± 12.73 ‡"
    assert cells[("×1/8", "splitmix")]["Acc [%]"] == "**81.00 ± 1.41**"
    notes = md.split("‡ Under-trained runs:")[1]
    assert notes.strip().startswith(f"- sheterofl: {reasons}")
    assert md.count("‡") == 1 + 1 + 1  # legend, the cell, the notes heading
    assert "$^\\ddagger$ Under-trained runs: sheterofl" in to_latex(table.reset_index())


def test_loader_joins_run_config_and_flags(grid):
    _, _, rows = grid
    one = rows.drop_duplicates(["method", "seed"]).set_index(["method", "seed"])
    assert one.loc[("splitmix_b8-1-1-1", 1), "budgets"] == "8-1-1-1"
    assert one.loc[("splitmix_pr2", 1), "participation"] == 2
    assert one.loc[("splitmix_pr2", 1), "num_clients"] == 10
    # run.json stores only overrides; the registered algorithm's defaults fill the rest
    assert bool(one.loc[("splitmix", 1), "rescale_init"]) is True
    assert bool(one.loc[("splitmix_tracked_ri0", 1), "rescale_init"]) is False
    assert one.loc[("splitmix", 1), "min_budget"] == 0.125
    assert bool(one.loc[("fedavg_at0.5_x1", 1), "is_at"]) is True
    assert bool(one.loc[("splitmix", 1), "is_at"]) is False


def test_reference_methods_leave_out_variants_only(grid):
    _, _, rows = grid
    _, excluded = reference_methods(rows)
    assert excluded == sorted(
        {s.method for s in variant_specs("digits", seeds=(1,))} - {"splitmix"}
    )


def test_at_runs_never_enter_table1(grid):
    _, _, rows = grid
    table = build_table1(rows)
    assert not table["method"].str.contains("_at|dbn").any()


def test_without_run_json_min_budget_falls_back_to_smallest_width(tmp_path):
    specs = [
        Spec("digits", f"fedavg_x{w:g}", "fedavg", 1, (w,), record=False) for w in (0.25, 0.5)
    ] + [Spec("digits", "splitmix", "splitmix", 1, (0.25, 0.5, 1.0), record=False)]
    write_runs(tmp_path, specs)
    rows = load_rows(str(tmp_path / GLOB))
    assert rows["budgets"].isna().all()
    assert (rows["min_budget"] == 0.25).all()
    # without a record nothing says a run is one of a method's per-width runs (the report never
    # guesses from a name): every run is its own column and none is flagged
    assert not rows["one_run_per_width"].any()
    table = build_table1(rows)
    assert set(table["column"]) == {"fedavg_x0.25", "fedavg_x0.5", "splitmix"}
    assert not table["budget_violating"].any()
    assert math.isnan(table["acc_std"].iloc[0])  # one seed: no std, shown as the mean alone
    assert "±" not in to_markdown(table).split("## ")[1]


def test_records_older_than_one_run_per_width_are_read_from_their_budget_fact(tmp_path):
    # records written before one_run_per_width existed: FedAvg's says whether its one width
    # violates the budget, which only a one-run-per-width method records
    specs = [
        Spec("digits", f"fedavg_x{w:g}", "fedavg", 1, (w,), legacy_record=True)
        for w in (0.125, 0.5)
    ] + [Spec("digits", "splitmix", "splitmix", 1, WIDTHS, legacy_record=True)]
    write_runs(tmp_path, specs)
    rows = load_rows(str(tmp_path / GLOB))
    per_width = rows.groupby("method")["one_run_per_width"].first().to_dict()
    assert per_width == {"fedavg_x0.125": True, "fedavg_x0.5": True, "splitmix": False}
    # only the params a legacy record stores are known; the rest are not guessed from today's code
    assert rows.loc[rows["method"] == "splitmix", "rescale_init"].isna().all()
    table = build_table1(rows)
    viol = table.set_index(["column", "width"])["budget_violating"]
    assert not viol[("fedavg", 0.125)] and viol[("fedavg", 0.5)]
    assert not viol["splitmix"].any()


def test_no_matching_rows_is_a_one_line_data_error(tmp_path):
    with pytest.raises(DataError, match="no evaluation rows match") as exc:
        load_rows(str(tmp_path / GLOB))
    assert "\n" not in str(exc.value)


def test_schema_violations_are_reported_with_the_file(tmp_path):
    spec = Spec("digits", "splitmix", "splitmix", 1, (1.0,))
    write_runs(tmp_path, [spec])
    path = run_dir(tmp_path, spec) / "eval.csv"
    df = pd.read_csv(path, keep_default_na=False)
    df.loc[0, "metric"] = "accuracy_typo"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="eval.csv"):
        load_rows(str(tmp_path / GLOB))


def test_without_run_json_pgd_rows_do_not_hide_runs_from_table1(tmp_path):
    specs = main_specs(("digits",), seeds=(1,), robust=True)
    for s in specs:
        s.record = False
    write_runs(tmp_path, specs)
    table = build_table1(load_rows(str(tmp_path / GLOB)))
    assert set(table["method"]) == {s.method for s in specs}  # every run is in the table


def test_loader_refuses_robust_accuracies_from_different_attacks(tmp_path):
    same = [Spec("digits", "splitmix", "splitmix", 1, WIDTHS, robust=True)]
    same.append(Spec("digits", "fedavg_x1", "fedavg", 1, (1.0,), robust=True))
    write_runs(tmp_path, same)
    assert set(load_rows(str(tmp_path / GLOB))["method"]) == {"splitmix", "fedavg_x1"}
    write_runs(tmp_path, [Spec("digits", "heterofl", "heterofl", 1, WIDTHS, robust=True,
                               pgd_steps=3)])  # fmt: skip
    with pytest.raises(DataError, match=r"different PGD attacks \(.*steps 7.*steps 3.*heterofl"):
        load_rows(str(tmp_path / GLOB))


def test_seed_spread_is_the_larger_std_and_undefined_for_one_seed():
    assert seed_std([0.79, 0.85]) == pytest.approx(0.03 * math.sqrt(2))
    assert math.isnan(seed_std([0.8]))
    assert seed_spread(0.01, 0.03) == seed_spread(0.03, 0.01) == 0.03
    assert math.isnan(seed_spread(math.nan, 0.03))


def test_flag_reason_of_a_two_round_run_compares_its_two_validations():
    key = RunKey("digits", "feature", "splitmix", "splitmix", 1)
    rows = [
        key.row("val_acc", v, round=r, width=1.0, client="mean", domain="all")
        for r, v in enumerate((0.30, 0.42))
    ] + [key.row("acc", 0.45, width=1.0, client="mean", domain="all")]
    frame = to_frame(rows + flag_rows(key, rows, num_classes=10, rule=FlagRule()))
    flags = run_flags(frame)
    assert flags[["checked", "flagged"]].values.tolist() == [[True, True]]
    assert flags["reason"].iloc[0] == (
        "validation accuracy still rising at ×1: +12.0 points, the last validation vs the one "
        "before (margin 2 points)"
    )
