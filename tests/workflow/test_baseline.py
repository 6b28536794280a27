"""A new baseline is one file in baselines/ plus a config entry; the workflow stays untouched."""

from __future__ import annotations

import csv
import filecmp
import json

import pytest

from . import REPO, copy_workflow, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

TOY = '''"""A toy baseline for the workflow test: FedAvg under another name, at a fixed width."""

from baselines.fedavg import FedAvg
from splitmix.fl.algorithm import register


@register
class ToyFedAvg(FedAvg):
    name = "toy_fedavg"
'''


def test_new_baseline_runs_through_the_dag(tmp_path):
    snakefile = copy_workflow(tmp_path)  # a private copy: the repo's baselines/ stay untouched
    (tmp_path / "baselines" / "toy_fedavg.py").write_text(TOY)
    cfg = tiny_config(name="toy")
    cfg["training"]["rounds"] = 1
    cfg["methods"] = {"toy": {"algorithm": "toy_fedavg", "params": {"width": 0.25}}}
    config = write_config(tmp_path / "toy.yaml", cfg)

    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), snakefile=snakefile)
    assert proc.returncode == 0, proc.stdout[-4000:]

    run = tmp_path / "results" / "digits-mini" / "tiny" / "toy" / "seed1"
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["algorithm"] == "toy_fedavg"
    assert record["config"]["method_params"] == {"width": 0.25}
    with open(run / "eval.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["algorithm"] for r in rows} == {"toy_fedavg"}
    assert {float(r["width"]) for r in rows if r["metric"] == "acc"} == {0.25}
    # FedAvg's capability comes with the class, so the report treats the new method as FedAvg
    # (budget flags of a one-run-per-width method) without an edit and without its name
    assert record["algorithm"]["one_run_per_width"] is True
    with open(tmp_path / "figures" / "toy" / "table1.csv") as fh:
        table = [(r["column"], r["width"], r["budget_violating"]) for r in csv.DictReader(fh)]
    assert table == [("toy", "0.25", "True")]  # 8-4-2-1: x1/4 is wider than the 1/8 budget

    # the workflow files used are the repo's, unchanged, and the repo did not get the toy
    for name in ("Snakefile", "workflow/rules/train.smk", "workflow/rules/common.smk"):
        assert filecmp.cmp(tmp_path / name, REPO / name, shallow=False)
    assert not (REPO / "baselines" / "toy_fedavg.py").exists()
