"""Durations as people read them in one-line progress messages (a run's log, the workflow's
console). Kept free of heavy imports: the workflow formats its time-left estimate while Snakemake
parses, where importing torch for a string would cost seconds per job."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``?`` when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
