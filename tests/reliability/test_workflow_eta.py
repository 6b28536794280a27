"""workflow/scripts/eta.py: the training time left that the workflow prints after each job."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "eta.py"


@pytest.fixture(scope="module")
def eta():
    spec = importlib.util.spec_from_file_location("eta", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_estimate_uses_each_datasets_own_mean_then_the_overall_one(eta):
    walls = {
        "results/a/s/m1/seed1": 10.0,
        "results/a/s/m2/seed1": 30.0,  # dataset a: mean 20
        "results/a/s/m3/seed1": None,
        "results/b/s/m1/seed1": 100.0,  # dataset b: mean 100
        "results/b/s/m2/seed1": None,
        "results/c/s/m1/seed1": None,  # no finished run of c: overall mean 140/3
    }
    done, total, left = eta.estimate(walls, jobs=2)
    assert (done, total) == (3, 6)
    assert left == pytest.approx((20 + 100 + 140 / 3) / 2)
    assert math.isnan(eta.estimate({"results/a/s/m/seed1": None}, jobs=1)[2])


def test_eta_reads_the_records_each_time_it_is_shown(eta, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = [f"results/d/s/m{i}/seed1" for i in range(4)]
    for run in runs:
        Path(run).mkdir(parents=True)
    shown = eta.Eta(runs, jobs=2)
    assert f"{shown}" == "0/4 runs trained"
    for i, run in enumerate(runs[:2]):
        Path(run, "run.json").write_text(json.dumps({"wall_time_s": 60.0 * (i + 1)}))
    Path(runs[2], "run.json").write_text("{not json")  # half a record counts as unfinished
    assert f"({shown})" == "(2/4 runs trained, about 1m30s of training left)"
    for run in runs[2:]:
        Path(run, "run.json").write_text(json.dumps({"wall_time_s": 1.0}))
    assert str(shown) == "4/4 runs trained"
