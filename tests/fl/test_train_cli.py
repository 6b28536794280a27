"""End to end: ``python -m splitmix train`` of every method on the bundled digits-mini data.

A few rounds on a small feature-non-IID split must already beat chance (0.1) by far; this
catches a method, the engine and the data layer that each pass their unit tests but do not fit
together (wrong pixel range, labels, widths, BN mode, aggregation that undoes training ...).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from splitmix.cli import main

EXPERIMENT = """
training:
  rounds: 5
  batch_size: 32
  test_batch_size: 128
  lr: 0.1
  lr_schedule: none
  budgets: 2-1  # half the clients train the full width, across two domains
  checkpoint_every: 2
  threads: 2
datasets:
  digits-mini:
    splits:
      feature: {kind: feature, clients_per_domain: 2, percent: 0.5, val_ratio: 0.2}
methods:
  fedavg: {algorithm: fedavg, params: {width: 0.5}}
  heterofl: {algorithm: heterofl}
  sheterofl: {algorithm: sheterofl}
  splitmix: {algorithm: splitmix, params: {atom: 0.25}, training: {lr: 0.05}}
seeds: [1]
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg", "heterofl", "sheterofl", "splitmix"])
def test_train_cli_beats_chance(tmp_path, method):
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT)
    out = tmp_path / "out"
    argv = ["train", "--config", str(config), "--dataset", "digits-mini", "--split", "feature",
            "--method", method, "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    for name in ("checkpoint.pt", "best.pt", "log.csv", "comm.csv", "run.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "run.json").read_text())
    log = pd.read_csv(out / "log.csv")
    assert len(log) == 5
    assert record["best_metric"] == pytest.approx(log["metric"].max())
    assert record["best_metric"] >= 0.5, log.filter(like="val_acc").to_string()
    widths = [c.split("@")[1] for c in log.columns if c.startswith("val_acc@")]
    assert widths == (["0.5"] if method == "fedavg" else ["0.5", "1"])  # budgets 2-1
    comm = pd.read_csv(out / "comm.csv")
    assert len(comm) == 5 * record["federation"]["num_clients"]
    assert (comm["bytes_up"] > 0).all() and (comm["bytes_down"] > 0).all()
