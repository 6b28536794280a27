"""The workflow's estimated training time left, shown in each training job's start message.

A run is finished when its ``run.json`` exists, and that record holds its wall time. The estimate
is the mean wall time of the finished runs of the same dataset (of all finished runs where a
dataset has none yet) for each unfinished run, divided by the jobs that run at a time. Training
dominates a run's cost, so evaluation and the report are left out of it.

Snakemake has no hook after a job; it formats a rule's message when the job starts, with the
Snakefile's globals, so ``workflow/rules/common.smk`` puts an ``Eta`` there and the train rule's
message names it: the estimate is computed afresh for every job, by reading files only.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from splitmix.runfolder import RUN_RECORD
from splitmix.timefmt import format_duration


def dataset_of(run_dir: str) -> str:
    """``results/<dataset>/<split>/<method>/seed<N>`` -> ``<dataset>``."""
    return Path(run_dir).parts[-4]


def wall_time(run_dir: str) -> float | None:
    """Seconds a finished run trained, or None while it is unfinished (or its record unreadable)."""
    try:
        return float(json.loads((Path(run_dir) / RUN_RECORD).read_text())["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def estimate(walls: dict[str, float | None], jobs: int) -> tuple[int, int, float]:
    """(finished, total, seconds left) for ``walls``: run folder -> wall time or None."""
    done = {d: w for d, w in walls.items() if w is not None}
    if not done:
        return 0, len(walls), math.nan
    overall = statistics.fmean(done.values())
    per_dataset: dict[str, list[float]] = {}
    for d, w in done.items():
        per_dataset.setdefault(dataset_of(d), []).append(w)
    left = 0.0
    for d, w in walls.items():
        if w is None:
            own = per_dataset.get(dataset_of(d))
            left += statistics.fmean(own) if own else overall
    return len(done), len(walls), left / max(1, jobs)


class Eta:
    """Formats (``str``, ``format``) as the estimate for ``run_dirs`` at the moment it is shown."""

    def __init__(self, run_dirs: list[str], jobs: int) -> None:
        self.run_dirs, self.jobs = list(run_dirs), jobs

    def __str__(self) -> str:
        done, total, left = estimate({d: wall_time(d) for d in self.run_dirs}, self.jobs)
        if done == total or not math.isfinite(left):  # finished, or nothing to estimate from
            return f"{done}/{total} runs trained"
        return f"{done}/{total} runs trained, about {format_duration(left)} of training left"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)
