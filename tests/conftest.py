"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline data mirror (``../shared/data`` beside the repo, or ``$SPLITMIX_DATA_MIRROR``).

    Tests on real files skip, naming the folder, where the mirror is absent (e.g. a fresh clone).
    """
    env = os.environ.get("SPLITMIX_DATA_MIRROR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"offline data mirror {path} is absent (set SPLITMIX_DATA_MIRROR to use one)")
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (modules opt in with ``pytestmark``): these tests check
    maths on small models, and 2 OpenMP threads on a shared 2-core machine spin against other
    processes and run several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
