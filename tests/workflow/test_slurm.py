"""The SLURM profile for real: config/test.yaml through sbatch on a running SLURM cluster.

CI starts a one-node cluster with `.ci/slurm-setup.sh`; elsewhere this test is skipped unless
`sinfo` answers and snakemake-executor-plugin-slurm is installed.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
import subprocess

import pytest

from . import REPO, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


def _slurm_ready() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found; CI starts one with .ci/slurm-setup.sh)"
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.strip():
        return f"SLURM does not answer: {probe.stderr.strip() or 'no nodes'}"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed"
    return None


def test_tiny_grid_runs_through_the_slurm_profile(tmp_path):
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    # config/test.yaml cut to two methods and one round: the point is the profile, not the grid
    cfg = tiny_config(name="slurm")
    cfg["training"]["rounds"] = 1
    cfg["runs"][0]["methods"] = ["fedavg_x0.125", "splitmix"]
    config = write_config(tmp_path / "slurm.yaml", cfg)
    # clusters without accounting storage have no working sacct: query squeue instead
    sacct = subprocess.run(["sacct", "-n", "-X"], capture_output=True, text=True)
    status = [] if sacct.returncode == 0 else ["--slurm-status-command", "squeue"]
    proc = snakemake(
        tmp_path,
        "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
        "--configfile", str(config),
        "--slurm-init-seconds-before-status-checks", "5",
        *status,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    # every training and evaluation run went through sbatch; report ran on the submit host
    submitted = re.findall(r"^Job \d+ has been submitted with SLURM jobid", proc.stdout, re.M)
    assert len(submitted) == 2 + 2
    with open(tmp_path / "figures" / "slurm" / "table1.csv") as fh:
        assert {r["method"] for r in csv.DictReader(fh)} == {"fedavg_x0.125", "splitmix"}
