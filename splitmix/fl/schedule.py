"""Learning-rate schedules, evaluated per round (docs/paper.md#hyperparameters, #pitfalls).

The original code steps its scheduler once per communication round and hands the resulting lr to a
FRESH optimizer for each client, so the schedule is a pure function of the round index: no scheduler
object and no state to checkpoint.
"""

from __future__ import annotations

import bisect
import math

from splitmix.config import RunConfig
from splitmix.errors import ConfigError

SCHEDULES = ("none", "cos", "multistep")


def lr_at(cfg: RunConfig, round_idx: int) -> float:
    """The learning rate of round ``round_idx`` (0-based) under ``cfg.lr_schedule``.

    ``cos`` is the original custom cosine annealing to 0 over ``cfg.rounds`` (t=0 gives ``lr``);
    ``multistep`` multiplies by ``gamma`` once per milestone already reached.
    """
    kind = cfg.lr_schedule
    if kind == "none":
        return float(cfg.lr)
    if kind == "cos":
        return float(cfg.lr) * (1.0 + math.cos(math.pi * round_idx / cfg.rounds)) / 2.0
    if kind == "multistep":
        passed = bisect.bisect_right(sorted(cfg.milestones), round_idx)
        return float(cfg.lr) * float(cfg.gamma) ** passed
    raise ConfigError(f"unknown lr_schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
