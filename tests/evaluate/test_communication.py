"""Communication and per-round rows from synthetic comm.csv / log.csv tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from splitmix.errors import DataError
from splitmix.evaluate.communication import communication_rows, curve_rows, read_log_csv
from splitmix.evaluate.rows import RunKey, to_frame

KEY = RunKey("digits-mini", "feature", "heterofl", "heterofl", 1)
NAMES = ["a-0", "a-1", "b-0"]
DOMAINS = {"a-0": "a", "a-1": "a", "b-0": "b"}


def _comm() -> pd.DataFrame:
    # client 2 never takes part; client 1 skips round 1
    rows = [
        (0, 0, 100, 10, 1.0),
        (0, 1, 200, 20, 2.0),
        (1, 0, 100, 10, 1.5),
        (2, 0, 100, 10, 1.0),
        (2, 1, 200, 30, 2.0),
    ]
    return pd.DataFrame(rows, columns=["round", "client", "bytes_down", "bytes_up", "seconds"])


def _values(df: pd.DataFrame, metric: str) -> dict[tuple[str, str], float]:
    sel = df[df["metric"] == metric]
    return {(r.client, r.domain): r.value for r in sel.itertuples()}


def test_totals_to_best_to_end_and_per_round_per_client():
    df = to_frame(communication_rows(KEY, _comm(), best_round=1, names=NAMES, domains=DOMAINS))
    assert _values(df, "bytes_down_total_to_best") == {
        ("a-0", "a"): 200, ("a-1", "a"): 200, ("b-0", "b"): 0,
        ("mean", "a"): 200, ("mean", "b"): 0, ("mean", "all"): 400 / 3,
    }  # fmt: skip
    up_total = _values(df, "bytes_up_total")
    assert up_total[("a-0", "a")] == 30 and up_total[("a-1", "a")] == 50
    assert up_total[("b-0", "b")] == 0
    # per round: mean over the rounds the client took part in; none for a client that never did
    per = _values(df, "bytes_up_per_round")
    assert per == {("a-0", "a"): 10, ("a-1", "a"): 25, ("mean", "a"): 17.5, ("mean", "all"): 17.5}
    assert _values(df, "client_seconds_total")[("a-0", "a")] == pytest.approx(3.5)
    assert set(df["round"]) == {-1} and df["width"].isna().all()
    assert set(df["unit"]) == {"B", "s"}


def test_unknown_client_index_is_a_data_error():
    comm = _comm()
    comm.loc[0, "client"] = 7
    with pytest.raises(DataError, match="client index 7 but the federation has 3"):
        communication_rows(KEY, comm, 1, NAMES, DOMAINS)


def test_curves_only_for_validated_rounds_and_every_width():
    nan = math.nan
    log = pd.DataFrame(
        {
            "round": [0, 1, 2],
            "lr": [0.1, 0.1, 0.1],
            "seconds": [3.0, 2.0, 4.0],
            "train_loss": [2.3, 2.0, 1.5],
            "val_acc@0.125": [0.2, nan, 0.4],
            "val_acc@1": [0.3, nan, 0.6],
            "val_loss@0.125": [2.2, nan, 1.9],
            "val_loss@1": [2.1, nan, 1.2],
            "metric": [0.3, nan, 0.6],
        }
    )
    df = to_frame(curve_rows(KEY, log, None, None))
    acc = df[df["metric"] == "val_acc"]
    assert list(zip(acc["round"], acc["width"], acc["value"], strict=True)) == [
        (0, 0.125, 0.2), (0, 1.0, 0.3), (2, 0.125, 0.4), (2, 1.0, 0.6),
    ]  # fmt: skip
    assert (acc["client"] == "mean").all() and (acc["domain"] == "all").all()
    assert df[df["metric"] == "round_seconds"]["value"].tolist() == [3.0, 2.0, 4.0]
    assert len(df[df["metric"] == "val_loss"]) == 4 and df["lam"].isna().all()


def test_robust_curves_carry_the_validation_lambdas():
    log = pd.DataFrame(
        {"round": [0], "seconds": [1.0], "train_loss": [1.0], "val_acc@1": [0.5], "val_ra@1": [0.2]}
    )
    df = to_frame(curve_rows(KEY, log, 0.0, 1.0))
    lam = dict(zip(df["metric"], df["lam"], strict=True))
    assert lam["val_acc"] == 0.0 and lam["val_robust_acc"] == 1.0


def test_missing_log_names_the_file(tmp_path):
    with pytest.raises(DataError, match="comm.csv: missing"):
        read_log_csv(tmp_path / "comm.csv", ("round",))
    (tmp_path / "log.csv").write_text("round,seconds\n0,1.0\n")
    with pytest.raises(DataError, match="missing column.*train_loss"):
        read_log_csv(tmp_path / "log.csv", ("round", "seconds", "train_loss"))
