"""Helpers of the reliability battery: run the real CLI in a subprocess and check what a user sees.

A case passes when the command exits with the expected status, prints no traceback, says what went
wrong in exactly one ``error:`` line (or ``interrupted``), and leaves no half-written file behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INJECT = Path(__file__).resolve().parent / "inject"  # the test-only sitecustomize

# Two rounds of FedAvg x1/8 on 3 clients of digits-mini: a complete run in about a second.
EXPERIMENT = """
training:
  rounds: 2
  batch_size: 32
  test_batch_size: 128
  lr: 0.1
  lr_schedule: none
  budgets: "1"
  checkpoint_every: 1
  threads: 1
datasets:
  digits-mini:
    splits:
      feature: {kind: feature, clients_per_domain: 1, percent: 0.1, val_ratio: 0.2}
methods:
  fedavg: {algorithm: fedavg, params: {width: 0.125}}
seeds: [1]
"""


def train_args(config: Path, out: Path) -> list[str]:
    return ["train", "--config", str(config), "--dataset", "digits-mini", "--split", "feature",
            "--method", "fedavg", "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip


def cli_env(data_root: Path, inject: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a CLI subprocess: this checkout first on the path, one thread, offline;
    with ``inject``, the fault-injection sitecustomize and its variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPLITMIX_")}
    paths = [str(INJECT)] if inject else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO)])
    env.update(OMP_NUM_THREADS="1", SPLITMIX_DATA=str(data_root), SPLITMIX_OFFLINE="1")
    env.update(inject or {})
    return env


def run_cli(
    args: list[str],
    data_root: Path,
    *,
    inject: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m splitmix ARGS`` (``prefix``: a wrapper such as a mount namespace)."""
    cmd = [*(prefix or []), sys.executable, "-m", "splitmix", *args]
    return subprocess.run(
        cmd,
        env=cli_env(data_root, inject),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one ``error:`` line of a failed command (asserting the exit status, no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def temporaries(folder: Path) -> list[str]:
    """Hidden temporary files left in ``folder`` (and below) by an interrupted write."""
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.fixture(scope="session")
def bundled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose digits-mini cache is decoded once for the whole session (copy it)."""
    root = tmp_path_factory.mktemp("data")
    from splitmix.data.store import load_domain

    for domain in ("mnist", "usps", "mnistm"):
        for split in ("train", "test"):
            load_domain("digits-mini", domain, split, root=root)
    return root


@pytest.fixture
def data_root(bundled_root: Path, tmp_path: Path) -> Path:
    """This test's own copy of the decoded digits-mini cache."""
    root = tmp_path / "data"
    shutil.copytree(bundled_root, root)
    return root


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT)
    return path


@pytest.fixture(scope="session")
def finished_run(bundled_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny run (checkpoint.pt, best.pt, logs, run.json), trained once per session."""
    folder = tmp_path_factory.mktemp("finished")
    config = folder / "exp.yaml"
    config.write_text(EXPERIMENT)
    proc = run_cli(train_args(config, folder / "run"), bundled_root)
    assert proc.returncode == 0, proc.stderr
    return folder / "run"


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the finished run, free to damage."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def namespace(setup: str) -> list[str] | None:
    """A command prefix that runs the CLI in a private mount namespace after ``setup`` (shell
    commands, e.g. mounting a small tmpfs), or None if this machine does not allow one."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    with tempfile.TemporaryDirectory() as probe_dir:
        probe = subprocess.run(
            [unshare, "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "none", probe_dir],
            capture_output=True,
        )
    if probe.returncode != 0:
        return None
    return [unshare, "-rm", "sh", "-c", f'{setup} && exec "$0" "$@"']
