"""The evaluation-row schema: round trip, means over clients, and one-line errors on bad files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from splitmix.errors import DataError
from splitmix.evaluate.rows import (
    COLUMNS,
    METRICS,
    RunKey,
    client_rows,
    read_rows,
    to_frame,
    write_rows,
)

KEY = RunKey("digits-mini", "feature", "splitmix", "splitmix", 3)
DOMAINS = {"mnist-0": "mnist", "mnist-1": "mnist", "usps-0": "usps"}


def _frame() -> pd.DataFrame:
    rows = client_rows(
        KEY, "acc", {"mnist-0": 0.5, "mnist-1": 0.75, "usps-0": 0.25}, DOMAINS, width=0.25
    )
    rows.append(KEY.row("macs", 1234.5, width=0.25))
    rows.append(KEY.row("val_acc", 0.4, round=7, width=1.0, lam=0.0, client="mean", domain="all"))
    rows.append(KEY.row("round_seconds", 1.0 / 3.0, round=7))
    return to_frame(rows)


def test_client_rows_add_domain_and_overall_unweighted_means():
    df = _frame()
    acc = df[df["metric"] == "acc"].set_index(["client", "domain"])["value"]
    assert acc[("mnist-0", "mnist")] == 0.5
    assert acc[("mean", "mnist")] == pytest.approx((0.5 + 0.75) / 2)
    assert acc[("mean", "usps")] == pytest.approx(0.25)
    # mean over CLIENTS (0.5), not over domain means (0.4375)
    assert acc[("mean", "all")] == pytest.approx((0.5 + 0.75 + 0.25) / 3)


def test_round_trip_keeps_values_dtypes_and_blanks(tmp_path):
    df = _frame()
    path = write_rows(df, tmp_path / "eval.csv")
    back = read_rows(path)
    assert list(back.columns) == list(COLUMNS)
    assert str(back["seed"].dtype) == "int64" and str(back["round"].dtype) == "int64"
    assert str(back["width"].dtype) == "float64" and str(back["value"].dtype) == "float64"
    pd.testing.assert_frame_equal(back, df)  # floats exactly, NaN width/lam, '' client
    macs = back[back["metric"] == "macs"].iloc[0]
    assert macs["client"] == "" and macs["domain"] == "" and math.isnan(macs["lam"])
    assert macs["unit"] == METRICS["macs"].unit == "MAC/sample"
    assert back[back["metric"] == "round_seconds"]["value"].iloc[0] == 1.0 / 3.0


def _write_csv(tmp_path, df: pd.DataFrame):
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False, na_rep="")
    return path


def _expect_one_line_error(path, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        read_rows(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def _where(df: pd.DataFrame, col: str, metric: str, value: object) -> pd.DataFrame:
    """``df`` with ``col`` set to ``value`` on the rows of ``metric``."""
    out = df.copy()
    out[col] = out[col].astype(object)
    out.loc[out["metric"] == metric, col] = value
    return out


BAD_FILES = {
    "missing column": (lambda df: df.drop(columns=["unit"]), "missing column.*unit"),
    "extra column": (lambda df: df.assign(extra=1), "unknown column.*extra"),
    "unknown metric": (lambda df: _where(df, "metric", "macs", "gflops"), "unknown metric.*gflops"),
    "wrong unit": (lambda df: _where(df, "unit", "macs", "GMAC"), "unit 'GMAC'.*MAC/sample"),
    "text seed": (
        lambda df: df.assign(seed="one"),
        "column 'seed' row 0 = 'one' is not an integer",
    ),
    "no width": (lambda df: _where(df, "width", "acc", ""), "metric 'acc' needs a width"),
    "acc > 1": (lambda df: _where(df, "value", "acc", 1.5), "not a fraction"),
    "text value": (
        lambda df: _where(df, "value", "macs", "x"),
        "column 'value' row .* not a number",
    ),
}


@pytest.mark.parametrize(("mutate", "match"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_schema_check_rejects_bad_files_with_one_line(tmp_path, mutate, match):
    path = _write_csv(tmp_path, mutate(_frame()))
    _expect_one_line_error(path, match)


def test_missing_file_names_the_command(tmp_path):
    _expect_one_line_error(tmp_path / "eval.csv", "python -m splitmix evaluate")


def test_invalid_rows_are_never_written_and_old_file_survives(tmp_path):
    path = write_rows(_frame(), tmp_path / "eval.csv")
    before = path.read_text()
    bad = _frame().assign(unit="parsecs")
    with pytest.raises(DataError, match="unit 'parsecs'"):
        write_rows(bad, path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["eval.csv"]  # no temp file left behind


def test_unknown_metric_cannot_even_be_built():
    with pytest.raises(ValueError, match="unknown metric 'gflops'"):
        KEY.row("gflops", 1.0)
