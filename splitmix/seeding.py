"""Deterministic, independent random streams.

Each consumer of randomness (partition, budgets, class assignment, client sampling, base sampling,
augmentation, model init, ...) draws from its own stream derived from ``(seed, name)``. Adding a
draw to one stream therefore never shifts another (unlike the original single global numpy RNG).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def rng(seed: int, name: str) -> np.random.Generator:
    """A numpy Generator for stream ``name`` of experiment ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), _key(name)]))


def torch_generator(seed: int, name: str) -> torch.Generator:
    """A CPU torch Generator for stream ``name`` of experiment ``seed``."""
    g = torch.Generator()
    g.manual_seed(int(rng(seed, name).integers(0, 2**63 - 1)))
    return g
