"""benchmarks/bench_gpu.py: skips cleanly without CUDA, and every step it would run exists."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_gpu  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: it would run")
def test_without_cuda_it_says_skipped_and_exits_0():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "skipped: no CUDA device visible (torch.cuda.is_available() is False)"
    )


def test_every_step_is_a_command_whose_options_exist():
    """Each step's options appear in its target's --help, so a lent GPU session does not die on
    a renamed flag."""
    args = argparse.Namespace(root="data", rounds=4, only=None)
    for name, cmd in bench_gpu.steps(args):
        target = cmd[1:3] if cmd[1] == "-m" else cmd[1:2]
        proc = subprocess.run(
            [sys.executable, *target, *(["estimate"] if cmd[1] == "-m" else []), "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert proc.returncode == 0, (name, proc.stderr)
        for flag in (a for a in cmd if a.startswith("--")):
            assert flag in proc.stdout, (name, flag)
