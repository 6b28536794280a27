"""The seed spread: how far apart two methods' means must be before the report calls one ahead.

Table 1's bold and the claims check decide "A beats B" the same way, so the rule lives in one
place. The spread of a pair is the larger of the two sample standard deviations (ddof = 1) over
seeds of each method's per-seed value: a difference of means no larger than what either method
varies by from seed to seed is not evidence of an ordering. With fewer than two seeds a standard
deviation, and hence the spread, is undefined (NaN): such a comparison cannot be decided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SPREAD_DEFINITION = (
    "seed spread = the larger of the two methods' sample standard deviations (ddof 1) over seeds "
    "of their per-seed values; undefined with fewer than two seeds"
)


def seed_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1); NaN for fewer than two values."""
    vals = np.asarray(values, dtype=np.float64)
    return float(np.std(vals, ddof=1)) if vals.size >= 2 else math.nan


def seed_spread(std_a: float, std_b: float) -> float:
    """max(std_a, std_b); NaN when either is NaN (a method with a single seed)."""
    if math.isnan(std_a) or math.isnan(std_b):
        return math.nan
    return max(float(std_a), float(std_b))
