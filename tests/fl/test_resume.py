"""Checkpoint/resume is exact: an interrupted run, resumed, ends bit-identical to a straight run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from splitmix.errors import ConfigError
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.training import run_training

from .toy import ToyLinear, accept_toy_runs, toy_config, toy_federation

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent


def _frame(path: Path) -> pd.DataFrame:
    """A log without its wall-clock column (the only thing allowed to differ)."""
    return pd.read_csv(path).drop(columns=["seconds"])


def _assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert ca["round"] == cb["round"]
    assert ca["algorithm"].keys() == cb["algorithm"].keys()
    for key, value in ca["algorithm"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, cb["algorithm"][key]), key
        else:
            assert value == cb["algorithm"][key], key
    assert (ca["best_round"], ca["best_metric"]) == (cb["best_round"], cb["best_metric"])
    ba, bb = load_checkpoint(a / "best.pt"), load_checkpoint(b / "best.pt")
    assert ba["round"] == bb["round"]
    assert torch.equal(ba["algorithm"]["weight"], bb["algorithm"]["weight"])
    for name in ("log.csv", "comm.csv"):
        pd.testing.assert_frame_equal(_frame(a / name), _frame(b / name), check_exact=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_training(toy_config(), out, federation=toy_federation(), progress=False)
    return out


@pytest.mark.parametrize("stop_after", [1, 2, 3, 5])
def test_stop_then_resume_equals_straight(tmp_path, straight_run, stop_after):
    cfg = toy_config()  # 6 rounds, checkpoint every 2
    res = run_training(
        cfg, tmp_path, federation=toy_federation(), progress=False, stop_after=stop_after
    )
    assert res["stopped"] and res["rounds_done"] == stop_after
    assert not (tmp_path / "run.json").exists()  # an interrupted run is visibly incomplete
    # rows were appended up to the kill, the checkpoint is at the last multiple of 2
    assert len(pd.read_csv(tmp_path / "log.csv")) == stop_after
    ckpt = tmp_path / "checkpoint.pt"
    if stop_after >= 2:
        assert load_checkpoint(ckpt)["round"] == (stop_after // 2) * 2 - 1
    else:
        assert not ckpt.exists()
    res = run_training(cfg, tmp_path, federation=toy_federation(), progress=False)
    assert not res["stopped"] and res["rounds_done"] == 6
    _assert_same_run(straight_run, tmp_path)


def test_complete_run_is_not_retrained(tmp_path):
    cfg = toy_config(rounds=3)
    first = run_training(cfg, tmp_path, federation=toy_federation(), progress=False)
    again = run_training(cfg, tmp_path, federation=toy_federation(), progress=False)
    assert ToyLinear.last.steps == {}  # no local step taken by the second call
    assert ToyLinear.last.aggregated_rounds == 3
    assert again["best_round"] == first["best_round"]
    assert len(pd.read_csv(tmp_path / "log.csv")) == 3


def test_config_hash_mismatch_and_restart(tmp_path):
    run_training(toy_config(rounds=2), tmp_path, federation=toy_federation(), progress=False)
    other = toy_config(rounds=2, lr=0.05)
    with pytest.raises(
        ConfigError, match="different config.*new --out directory or pass --restart"
    ):
        run_training(other, tmp_path, federation=toy_federation(), progress=False)
    res = run_training(other, tmp_path, federation=toy_federation(), progress=False, restart=True)
    assert res["config_hash"] == other.config_hash()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config_hash"] == other.config_hash()
    assert pd.read_csv(tmp_path / "log.csv")["lr"].iloc[0] == 0.05


# ---- a real SIGKILL of the CLI ----------------------------------------------------------------
EXPERIMENT = """
data_root: unused
training:
  arch: toy
  augment: none
  rounds: 24
  batch_size: 8
  test_batch_size: 16
  lr: 0.1
  checkpoint_every: 4
  threads: 1
datasets:
  toy: {splits: {iid: {kind: iid}}}
methods:
  toy: {algorithm: toy-linear}
seeds: [1]
"""

# Runs the real CLI with the toy registered, the federation replaced by the synthetic one, and
# each round slowed down so that the kill lands between checkpoints.
DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
import splitmix.data.federation as federation
from fl.toy import ToyLinear, toy_federation
federation.build_federation = lambda cfg: toy_federation()
# the toy dataset and model are test-only names that run-config validation rightly refuses
import splitmix.experiment as experiment
experiment.validate_run = lambda cfg, source="", check_device=True: cfg
aggregate = ToyLinear.aggregate
def slow_aggregate(self, updates):
    time.sleep(0.08)
    aggregate(self, updates)
ToyLinear.aggregate = slow_aggregate
from splitmix.cli import main
main(sys.argv[1:])
"""


def _train_cmd(tmp_path: Path, out: Path) -> list[str]:
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS_DIR))))
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT)
    return [
        sys.executable,
        str(driver),
        "train",
        "--config",
        str(config),
        "--dataset",
        "toy",
        "--split",
        "iid",
        "--method",
        "toy",
        "--seed",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.mark.slow  # three interpreter starts with torch: ~15 s on 2 shared cores
def test_sigkill_between_checkpoints_then_resume(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(tmp_path, straight), check=True, cwd=REPO, timeout=120)

    proc = subprocess.Popen(_train_cmd(tmp_path, killed), cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, "run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.15)  # a round or two past the checkpoint: mid-interval
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "run.json").exists()
    assert load_checkpoint(killed / "checkpoint.pt")["round"] < 23

    subprocess.run(_train_cmd(tmp_path, killed), check=True, cwd=REPO, timeout=120)
    _assert_same_run(straight, killed)
    assert len(pd.read_csv(killed / "log.csv")) == 24


def _cli(argv: list[str]) -> int:
    from splitmix.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code


def test_cli_set_resume_mismatch_and_restart(tmp_path, monkeypatch, capsys):
    import splitmix.data.federation as federation

    monkeypatch.setattr(federation, "build_federation", lambda cfg: toy_federation())
    accept_toy_runs(monkeypatch)
    config = tmp_path / "exp.yaml"
    config.write_text(EXPERIMENT)
    out = tmp_path / "out"
    base = ["train", "--config", str(config), "--dataset", "toy", "--split", "iid",
            "--method", "toy", "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip
    assert _cli([*base, "--set", "rounds=3", "--set", "lr=5e-2"]) == 0
    log = pd.read_csv(out / "log.csv")
    assert len(log) == 3 and log["lr"].iloc[0] == 0.05
    assert _cli([*base, "--set", "rounds=4"]) == 2  # same dir, different config
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--restart" in err and "\n" not in err
    assert _cli([*base, "--set", "rounds=4", "--restart"]) == 0
    assert len(pd.read_csv(out / "log.csv")) == 4
    assert _cli([*base[:6], "nope", *base[7:]]) == 2  # unknown split
    assert "unknown split 'nope'; available: iid" in capsys.readouterr().err
