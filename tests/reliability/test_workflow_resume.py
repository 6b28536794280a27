"""The workflow under interruption and concurrency, with the real `snakemake` (issue-style repros).

* A second `snakemake` (here a dry run of another config with the same workflow name) while a
  workflow runs must not change what the running workflow's later jobs train.
* A workflow hard-killed mid-training (SIGKILL of snakemake and its job), unlocked and rerun,
  resumes the job from its last checkpoint, trains only the remaining rounds, and ends with
  results bit-identical to a workflow that was never interrupted; a finished run keeps one model
  file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from splitmix.evaluate.rows import TIME_UNITS
from splitmix.experiment import resolve_run
from splitmix.fl.checkpoint import load_checkpoint
from workflow import PROFILE, SNAKEFILE, SNAKEMAKE, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

RUN = Path("results/digits-mini/tiny/splitmix/seed1")
TRAIN_LOG = Path("results/logs/train/digits-mini/tiny/splitmix/seed1.log")


def _config(name: str, methods: list[str], **training) -> dict:
    cfg = tiny_config(name=name, attack="none")
    cfg["training"].update(threads=1, **training)
    cfg["methods"] = {m: cfg["methods"][m] for m in methods}
    cfg["runs"] = [{"dataset": "digits-mini", "split": "tiny", "methods": methods}]
    return cfg


def _start(workdir: Path, config: Path) -> tuple[subprocess.Popen, list[str]]:
    """snakemake in the background (its own process group), its console collected in a list."""
    cmd = [str(SNAKEMAKE), "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", "1",
           "--workflow-profile", str(PROFILE), "--configfile", str(config)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _wait_for(condition, proc: subprocess.Popen, lines: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.05)


# ---- a second snakemake ---------------------------------------------------------------------
def test_a_second_snakemake_does_not_change_what_a_running_workflow_trains(tmp_path):
    methods = ["fedavg_x0.125", "fedavg_x0.25", "splitmix"]
    cfg_a = _config("shared", methods, rounds=3)
    cfg_b = _config("shared", methods, rounds=3, weight_decay=0.001)  # same name, other values
    a = write_config(tmp_path / "a.yaml", cfg_a)
    b = write_config(tmp_path / "b.yaml", cfg_b)
    workdir = tmp_path / "work"
    workdir.mkdir()

    proc, lines = _start(workdir, a)
    _wait_for(lambda: any("(Rule: train)" in line for line in list(lines)), proc, lines)
    dry_b = snakemake(workdir, "-n", "--cores", "1", "--configfile", str(b))
    assert dry_b.returncode == 0, dry_b.stdout[-2000:]
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]

    exp_a = {k: v for k, v in cfg_a.items() if k != "workflow"}
    for method in methods:
        record = json.loads(
            (workdir / RUN.parent.parent / method / "seed1" / "run.json").read_text()
        )
        assert record["config"]["weight_decay"] == 0.0005, method  # A's value, not B's
        assert (
            record["config_hash"]
            == resolve_run(exp_a, "digits-mini", "tiny", method, 1).config_hash()
        )
    again = snakemake(workdir, "-n", "--cores", "1", "--configfile", str(a))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-2000:]


# ---- hard kill, unlock, resume ------------------------------------------------------------
def _published(run_dir: Path) -> dict:
    """What a finished run publishes, without the wall-clock numbers."""
    best = load_checkpoint(run_dir / "best.pt")
    record = json.loads((run_dir / "run.json").read_text())
    rows = pd.read_csv(run_dir / "eval.csv")
    return {
        "best": {k: v for k, v in best["algorithm"].items() if isinstance(v, torch.Tensor)},
        "best_round": (best["round"], best["metric"], record["best_round"], record["best_metric"]),
        "log": pd.read_csv(run_dir / "log.csv").drop(columns=["seconds"]),
        "comm": pd.read_csv(run_dir / "comm.csv").drop(columns=["seconds"]),
        # every wall-clock measurement (seconds, latencies) differs between two runs by nature
        "eval": rows[~rows["unit"].isin(TIME_UNITS)].reset_index(drop=True),
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["best"].keys() == b["best"].keys()
    for key, value in a["best"].items():
        assert torch.equal(value, b["best"][key]), key
    assert a["best_round"] == b["best_round"]
    for name in ("log", "comm", "eval"):
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


def test_hard_killed_workflow_resumes_the_job_bit_identical(tmp_path):
    config = write_config(tmp_path / "c.yaml", _config("resume", ["splitmix"], rounds=8,
                                                       checkpoint_every=2))  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    done = snakemake(straight, "--cores", "1", "--configfile", str(config))
    assert done.returncode == 0, done.stdout[-3000:]

    proc, lines = _start(killed, config)
    log = killed / TRAIN_LOG
    _wait_for(lambda: log.is_file() and "round 3/8" in log.read_text(), proc, lines)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, as a lost node or `kill -9`
    proc.wait(timeout=60)
    assert not (killed / RUN / "run.json").exists()
    assert (killed / RUN / "checkpoint.pt").is_file()

    locked = snakemake(killed, "--cores", "1", "--configfile", str(config))
    assert locked.returncode != 0 and "--unlock" in locked.stdout  # the documented way out
    unlock = snakemake(killed, "--unlock", "--configfile", str(config))
    assert unlock.returncode == 0, unlock.stdout[-2000:]
    rerun = snakemake(killed, "--cores", "1", "--configfile", str(config))
    assert rerun.returncode == 0, rerun.stdout[-3000:]

    # the rerun resumed and trained only the remaining rounds (one progress line per round)
    text = (killed / TRAIN_LOG).read_text()
    resumed = int(re.search(r"resuming after round (\d+) of 8", text).group(1))
    assert resumed >= 2
    assert re.findall(r"^round (\d+)/8", text, flags=re.M) == [
        str(r) for r in range(resumed + 1, 9)
    ]
    _assert_identical(_published(straight / RUN), _published(killed / RUN))
    # a finished run keeps one model file: the resume state is gone
    for run_dir in (straight / RUN, killed / RUN):
        assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt"]
        assert not list(run_dir.glob(".*.tmp"))
