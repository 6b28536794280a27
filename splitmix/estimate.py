"""``python -m splitmix estimate``: the hours a grid's training runs will take on this machine.

A cluster allocation is sized before any data is downloaded, so the estimate cannot wait for the
data. It times a few real rounds of each distinct run on a *synthetic* federation with exactly
the client count, per-client sample counts and image shape the real split would give (labels
follow the domains' class counts, pixels are random uint8: speed does not depend on pixel
values), then extrapolates to every run of the config:

    hours = rounds x train s/round + validations x val s/pass + checkpoints x checkpoint s

The rounds go through the engine's own round and validation functions (``splitmix.fl.engine``),
so the timing includes everything a round of a real run does, on the device and with the
threads the run would use. Not included: data preparation, the ``evaluate`` jobs and writes of
the best model so far (one state write per improving validation).

Domain sizes come from, in order: the bundle's provenance (bundled datasets), the prepared cache's
manifest (a dataset prepared here), else the known sizes below; only DomainNet's are approximate.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import gc
import heapq
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from splitmix.config import RunConfig
from splitmix.data.recipes import FEDBN_PART_LEN, FEDBN_PARTS
from splitmix.errors import ConfigError

WARMUP_ROUNDS = 1  # the first round pays one-off costs (allocator growth, kernel selection)
RUNTIME_MARGIN = 1.25  # suggested SLURM time limit = longest run x this

# (train, test) images per domain of the prepared data where nothing here says better. Digits:
# FedBN's 10 train parts of 743.8 images (the recipe's constants: 7,438) and 20% of official
# train+test as test (the test counts only give the federation its shapes: no timed step reads
# test data). CIFAR-10: official. DomainNet: approximate (FedBN's split lists are not known here):
# prepare it for exact counts.
_FEDBN_TRAIN = int(FEDBN_PART_LEN * FEDBN_PARTS)
KNOWN_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "digits": {
        "mnist": (_FEDBN_TRAIN, 14000),
        "svhn": (_FEDBN_TRAIN, 19858),
        "usps": (_FEDBN_TRAIN, 1860),
        "synth": (_FEDBN_TRAIN, 97791),
        "mnistm": (_FEDBN_TRAIN, 13601),
    },
    "cifar10": {"cifar10": (50000, 10000)},
    "domainnet": {
        d: (2000, 900) for d in ("real", "clipart", "infograph", "painting", "quickdraw", "sketch")
    },
}
APPROXIMATE = frozenset({"domainnet"})

# Fields that change neither what a round computes nor its size: runs differing only in these
# cost the same per round and are timed once (rounds, eval_every and checkpoint_every enter the
# extrapolation instead).
COST_FREE_FIELDS = (
    "seed",
    "method",
    "split",
    "rounds",
    "lr",
    "lr_schedule",
    "milestones",
    "gamma",
    "eval_every",
    "checkpoint_every",
)


# ---- domain sizes and the synthetic federation ----------------------------------------------
@dataclass(frozen=True)
class DomainCounts:
    """Per-class image counts of one domain's train and test sets, and where they came from."""

    train: tuple[int, ...]
    test: tuple[int, ...]
    source: str  # bundled | prepared | known | approximate


def _uniform(n: int, num_classes: int) -> tuple[int, ...]:
    """``n`` images spread over the classes as evenly as integers allow."""
    return tuple(n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes))


def domain_counts(dataset: str, domain: str, size: int, root: str | None) -> DomainCounts:
    """The class counts the real domain has (see the module docstring for the order of sources)."""
    from splitmix.data.catalog import get_dataset

    spec = get_dataset(dataset)
    if spec.bundled:
        from splitmix.data.bundle import provenance

        splits = provenance(dataset)["domains"][domain]["splits"]
        return DomainCounts(
            tuple(splits["train"]["class_counts"]), tuple(splits["test"]["class_counts"]), "bundled"
        )
    from splitmix.data.store import read_manifest

    manifest = read_manifest(dataset, domain, size, root)
    if manifest is not None:
        splits = manifest["splits"]
        return DomainCounts(
            tuple(splits["train"]["class_counts"]),
            tuple(splits["test"]["class_counts"]),
            "prepared",
        )
    known = KNOWN_SIZES.get(dataset, {}).get(domain)
    if known is None:
        raise ConfigError(
            f"the size of {dataset}/{domain} is not known here; prepare it first "
            f"(`python -m splitmix data prepare {dataset}`) so that the estimate can read it"
        )
    n_train, n_test = known
    return DomainCounts(
        _uniform(n_train, spec.num_classes),
        _uniform(n_test, spec.num_classes),
        "approximate" if dataset in APPROXIMATE else "known",
    )


def _labels(counts: Sequence[int]) -> np.ndarray:
    """A label array with these class counts (order is irrelevant: every split's sizes depend
    only on the class counts)."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), np.asarray(counts, dtype=np.int64))


@dataclass
class SplitPlan:
    """What the real split gives, without pixels: every client's shard, budget and weight."""

    spec: Any
    size: int
    domains: list[str]
    sources: dict[str, str]
    shards: list[Any]
    budgets: list[float]
    weights: list[float]
    train_y: dict[str, np.ndarray]
    test_y: dict[str, np.ndarray]


def plan_split(cfg: RunConfig) -> SplitPlan:
    """Clients, their order, budgets, weights, labels and sample counts as the real split gives
    them: the split runs on label arrays with the real class counts."""
    from splitmix.data.budgets import assign_budgets
    from splitmix.data.catalog import get_dataset
    from splitmix.data.federation import _domains
    from splitmix.data.partition import client_weights, split_federation

    spec = get_dataset(cfg.dataset)
    size = cfg.image_size or spec.image_size
    domains = _domains(cfg)
    counts = {d: domain_counts(cfg.dataset, d, size, cfg.data_root) for d in domains}
    train_y = {d: _labels(c.train) for d, c in counts.items()}
    test_y = {d: _labels(c.test) for d, c in counts.items()}
    shards = split_federation(
        train_y, test_y, cfg.split_config, cfg.seed, num_classes=spec.num_classes
    )
    budgets = assign_budgets(cfg.budgets, len(shards), mode=cfg.budget_assignment, seed=cfg.seed)
    return SplitPlan(
        spec=spec,
        size=size,
        domains=list(domains),
        sources={d: c.source for d, c in counts.items()},
        shards=list(shards),
        budgets=[float(b) for b in budgets],
        weights=[float(w) for w in client_weights(shards)],
        train_y=train_y,
        test_y=test_y,
    )


def build_federation(
    cfg: RunConfig,
    plan: SplitPlan,
    keep: Sequence[int] | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
) -> Any:
    """The federation of ``plan`` with random pixels: every client, or only those in ``keep``
    with at most ``max_train`` / ``max_val`` of their images (a sampled timing)."""
    import torch

    from splitmix.data.clients import Client, Federation

    gen = torch.Generator().manual_seed(cfg.seed)
    size = plan.size

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)

    def first(idx: np.ndarray, cap: int | None) -> np.ndarray:
        return idx if cap is None else idx[:cap]

    picked = list(range(len(plan.shards))) if keep is None else list(keep)
    shards = [plan.shards[i] for i in picked]
    # no timed step reads test data: one shared block keeps its memory out of the measurement
    test_pool = images(max(len(s.test) for s in shards))
    clients = []
    for new_index, (i, s) in enumerate(zip(picked, shards, strict=True)):
        train, val = first(s.train, max_train), first(s.val, max_val)
        clients.append(
            Client(
                index=new_index,
                name=s.name,
                domain=s.domain,
                train_x=images(len(train)),
                train_y=torch.from_numpy(plan.train_y[s.domain][train]),
                val_x=images(len(val)),
                val_y=torch.from_numpy(plan.train_y[s.domain][val]),
                test_x=test_pool[: len(s.test)],
                test_y=torch.from_numpy(plan.test_y[s.domain][s.test]),
                budget=plan.budgets[i],
                weight=plan.weights[i],
                classes=s.classes,
            )
        )
    return Federation(
        dataset=cfg.dataset,
        split=cfg.split,
        domains=tuple(plan.domains),
        num_classes=plan.spec.num_classes,
        input_shape=(3, size, size),
        clients=clients,
    )


def synthetic_federation(cfg: RunConfig) -> tuple[Any, dict[str, str]]:
    """The federation ``cfg``'s split would build, with random pixels; and each domain's size
    source (``plan_split``: every count is the real one)."""
    plan = plan_split(cfg)
    return build_federation(cfg, plan), plan.sources


# ---- timing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """Seconds of one run's recurring work, measured on this machine."""

    train_s: float  # one round: sampling, download, local SGD of every client, upload, aggregate
    val_s: float  # one validation pass: every client's val set at every width
    checkpoint_s: float  # one write of the resume state


def _clock(device: Any) -> float:
    """Wall time after the device finished its queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _probe(
    probe: RunConfig,
    fed: Any,
    rounds: int,
    warmup: int,
    train_seconds: Callable[[Any, int, float], float],
) -> Timing:
    """Run ``warmup`` untimed and ``rounds`` timed rounds of ``probe`` on ``fed`` through the
    engine's own round and validation, in a temporary folder removed afterwards; a round's
    training seconds are ``train_seconds(run, round, wall seconds of train_round)``."""
    import torch

    from splitmix.training import training_run

    torch.set_num_threads(probe.threads)
    train, val = [], []
    with tempfile.TemporaryDirectory(prefix="splitmix-estimate-") as tmp:
        run = training_run(probe, Path(tmp), fed)
        run.resume_or_start(restart=True)
        for r in range(warmup + rounds):
            t0 = _clock(run.device)
            run.train_round(r)
            t1 = _clock(run.device)
            run.validate(r)
            t2 = _clock(run.device)
            if r >= warmup:
                train.append(train_seconds(run, r, t1 - t0))
                val.append(t2 - t1)
        t0 = _clock(run.device)
        run.save_checkpoint(warmup + rounds - 1, 0.0)
        checkpoint = _clock(run.device) - t0
        del run
    return Timing(float(np.mean(train)), float(np.mean(val)), checkpoint)


def _probe_config(cfg: RunConfig, rounds: int, warmup: int, **changes: Any) -> RunConfig:
    """``cfg`` long enough for the probe, never validating by itself (validation is timed
    apart from training)."""
    total = max(cfg.rounds, warmup + rounds + 1)
    return dataclasses.replace(cfg, rounds=total, eval_every=total + 1, **changes)


def time_run(cfg: RunConfig, fed: Any, rounds: int, warmup: int = WARMUP_ROUNDS) -> Timing:
    """Mean seconds of ``rounds`` rounds (after ``warmup`` untimed ones) of ``cfg`` on ``fed``."""
    probe = _probe_config(cfg, rounds, warmup)
    return _probe(probe, fed, rounds, warmup, lambda run, r, seconds: seconds)


def representatives(plan: SplitPlan) -> dict[float, int]:
    """The first client of each distinct budget: what one client's step costs depends on its
    budget (the sub-model it trains), not on which client it is."""
    reps: dict[float, int] = {}
    for i, b in enumerate(plan.budgets):
        reps.setdefault(b, i)
    return reps


def time_sampled(
    cfg: RunConfig, plan: SplitPlan, steps: int, rounds: int, warmup: int = WARMUP_ROUNDS
) -> Timing:
    """Like ``time_run``, but on one client per budget holding at most ``steps`` batches of
    training and of validation images, then scaled up to the real round: every client's
    seconds = its budget representative's seconds x (its real steps / the steps timed), times
    the share of clients a round samples; validation scales with the number of images. Minutes
    instead of hours for grids whose whole rounds are long on this machine (CIFAR-10 or DomainNet
    on a CPU); per-client download, upload and merge costs are scaled with the steps, so the
    estimate errs long by those (small beside the steps)."""
    from splitmix.fl.steps import local_steps

    reps = representatives(plan)
    fed = build_federation(
        cfg, plan, list(reps.values()), steps * cfg.batch_size, steps * cfg.val_batch
    )
    timed_steps = {
        b: local_steps(int(c.train_y.shape[0]), cfg.batch_size, 1)
        for b, c in zip(reps, fed.clients, strict=True)
    }

    def train_seconds(run: Any, r: int, round_s: float) -> float:
        per_client = {
            fed.clients[int(row["client"])].budget: float(row["seconds"])
            for row in run.comm.rows
            if int(row["round"]) == r
        }
        server = max(0.0, round_s - sum(per_client.values()))
        return server + _scaled_clients(cfg, plan, per_client, timed_steps)

    probe = _probe_config(cfg, rounds, warmup, local_epochs=1, participation=-1)
    t = _probe(probe, fed, rounds, warmup, train_seconds)
    timed_val = sum(int(c.val_y.numel()) for c in fed.clients)
    real_val = sum(len(s.val) for s in plan.shards)
    val_scale = real_val / timed_val if timed_val else 1.0
    return dataclasses.replace(t, val_s=t.val_s * val_scale)


def _scaled_clients(
    cfg: RunConfig,
    plan: SplitPlan,
    seconds: dict[float, float],
    timed_steps: dict[float, int],
) -> float:
    """Expected client seconds of one real round from the representatives' ``seconds``."""
    from splitmix.fl.steps import local_steps

    total = 0.0
    for shard, budget in zip(plan.shards, plan.budgets, strict=True):
        real = local_steps(len(shard.train), cfg.batch_size, cfg.local_epochs)
        total += seconds[budget] * real / max(1, timed_steps[budget])
    clients = len(plan.shards)
    share = 1.0 if cfg.participation == -1 else cfg.participation / clients
    return total * share


# ---- extrapolation ----------------------------------------------------------------------------
def validations(rounds: int, eval_every: int) -> int:
    """Validation passes of a run: every ``eval_every``-th round, and always the last one."""
    return rounds // eval_every + (1 if rounds % eval_every else 0)


def checkpoints(rounds: int, checkpoint_every: int) -> int:
    """Resume-state writes of a run: every ``checkpoint_every`` rounds before the last, plus the
    final one."""
    return (rounds - 1) // checkpoint_every + 1


def run_seconds(t: Timing, rounds: int, eval_every: int, checkpoint_every: int) -> float:
    """Estimated wall seconds of one run's training job."""
    return (
        rounds * t.train_s
        + validations(rounds, eval_every) * t.val_s
        + checkpoints(rounds, checkpoint_every) * t.checkpoint_s
    )


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall time of ``durations`` run as at most ``slots`` parallel jobs, longest first (how a
    scheduler with free slots roughly proceeds; at least the longest job and sum / slots)."""
    if not durations:
        return 0.0
    ends = [0.0] * max(1, min(slots, len(durations)))
    for d in sorted(durations, reverse=True):
        heapq.heappush(ends, heapq.heappop(ends) + d)
    return max(ends)


def parallel_jobs(device: str, cores: int, threads: int, gpus: int) -> int:
    """Training jobs at once: each takes ``threads`` cores (the workflow's ``threads``), and on a
    GPU one GPU each."""
    jobs = max(1, cores // max(1, threads))
    return jobs if device == "cpu" else max(1, min(jobs, gpus))


# ---- the grid ---------------------------------------------------------------------------------
def cost_key(cfg: RunConfig) -> str:
    """What a round of ``cfg`` costs depends on: everything but ``COST_FREE_FIELDS``."""
    values = cfg.to_dict()
    for name in COST_FREE_FIELDS:
        values.pop(name)
    return json.dumps(values, sort_keys=True, default=list)


def run_name(cfg: RunConfig) -> str:
    return f"{cfg.dataset}/{cfg.split}/{cfg.method}/seed{cfg.seed}"


def selected(cfg: RunConfig, only: Sequence[str]) -> bool:
    """Whether ``--only`` patterns pick this run: a pattern matches ``dataset/split/method``
    (shell wildcards), or names a dataset or dataset/split."""
    if not only:
        return True
    path = f"{cfg.dataset}/{cfg.split}/{cfg.method}"
    return any(
        fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p.rstrip("/") + "/*")
        for p in only
    )


@dataclass
class Row:
    """One run of the grid and the timing its estimate extrapolates."""

    cfg: RunConfig
    timed_as: str  # the run whose timing this run uses
    timing: Timing | None  # None: not selected by --only

    @property
    def hours(self) -> float | None:
        if self.timing is None:
            return None
        cfg = self.cfg
        return run_seconds(self.timing, cfg.rounds, cfg.eval_every, cfg.checkpoint_every) / 3600


def resolve_grid(configfile: Path, device: str, threads: int | None) -> list[RunConfig]:
    """Every run of the config, resolved with ``device`` (validated: a device this torch cannot
    use is refused like a run's) and the threads override."""
    from splitmix.experiment import iter_runs, load_experiment, resolve_run

    if not configfile.is_file():
        raise ConfigError(f"config file {configfile} does not exist; pass --configfile FILE")
    exp = load_experiment(configfile)
    sets = [f"device={device}"] + ([f"threads={threads}"] if threads is not None else [])
    source = f"{configfile} with --device {device}" + (
        f" --threads {threads}" if threads is not None else ""
    )
    runs = [resolve_run(exp, *key, sets=sets, source=source) for key in iter_runs(exp)]
    if not runs:
        raise ConfigError(f"{configfile} lists no runs (its runs section is empty)")
    return runs


def estimate(
    runs: Sequence[RunConfig],
    rounds: int,
    only: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    steps: int | None = None,
) -> tuple[list[Row], dict[str, set[str]]]:
    """Time each distinct run of ``runs`` picked by ``only`` once (whole rounds, or with
    ``steps`` a sampled round: ``time_sampled``); one ``Row`` per run, and the size sources seen
    per dataset."""
    picked = [c for c in runs if selected(c, only)]
    if not picked:
        names = sorted({f"{c.dataset}/{c.split}" for c in runs})
        raise ConfigError(
            f"--only {' '.join(only)} matches no run of the config; its runs are under: "
            f"{', '.join(names)}"
        )
    groups: dict[str, list[RunConfig]] = {}
    for cfg in picked:
        groups.setdefault(cost_key(cfg), []).append(cfg)
    timings: dict[str, tuple[str, Timing]] = {}
    sources: dict[str, set[str]] = {}
    for i, (key, members) in enumerate(groups.items(), 1):
        cfg = members[0]
        plan = plan_split(cfg)
        sources.setdefault(cfg.dataset, set()).update(plan.sources.values())
        clients = f"{len(plan.shards)} clients"
        if steps is not None:
            clients = f"{len(representatives(plan))} of {clients}, {steps} step(s) each"
        if log:
            log(
                f"timing {i}/{len(groups)}: {run_name(cfg)} ({clients}, "
                f"{len(members)} run(s) share it)"
            )
        if steps is None:
            t = time_run(cfg, build_federation(cfg, plan), rounds)
        else:
            t = time_sampled(cfg, plan, steps, rounds)
        if log:
            log(
                f"  train {t.train_s:.2f} s/round, validation {t.val_s:.2f} s, "
                f"checkpoint {t.checkpoint_s:.2f} s"
            )
        timings[key] = (run_name(cfg), t)
        del plan
        gc.collect()
    rows = []
    for cfg in runs:
        hit = timings.get(cost_key(cfg)) if selected(cfg, only) else None
        rows.append(Row(cfg, hit[0] if hit else "", hit[1] if hit else None))
    return rows, sources


# ---- output -----------------------------------------------------------------------------------
CSV_COLUMNS = (
    "dataset",
    "split",
    "method",
    "seed",
    "rounds",
    "eval_every",
    "checkpoint_every",
    "threads",
    "train_s_per_round",
    "val_s_per_pass",
    "checkpoint_s",
    "hours",
    "timed_as",
)


def csv_text(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        c, t = row.cfg, row.timing
        timed = [f"{t.train_s:.6g}", f"{t.val_s:.6g}", f"{t.checkpoint_s:.6g}"] if t else [""] * 3
        hours = f"{row.hours:.6g}" if row.hours is not None else ""
        writer.writerow(
            [c.dataset, c.split, c.method, c.seed, c.rounds, c.eval_every, c.checkpoint_every]
            + [c.threads]
            + timed
            + [hours, row.timed_as]
        )
    return buf.getvalue()


def _hours(hours: float | None) -> str:
    if hours is None:
        return "not timed"
    return "<0.01" if hours < 0.005 else f"{hours:.2f}"


def table_text(rows: Sequence[Row]) -> str:
    """The per-run table, columns aligned."""
    head = ("run", "rounds", "train s/round", "val s/pass", "hours")
    body = [
        (
            run_name(r.cfg),
            str(r.cfg.rounds),
            f"{r.timing.train_s:.2f}" if r.timing else "-",
            f"{r.timing.val_s:.2f}" if r.timing else "-",
            _hours(r.hours),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [head, *body]
    ]
    return "\n".join(lines)


def summary_lines(rows: Sequence[Row], device: str, cores: int, gpus: int) -> list[str]:
    """Totals, parallel wall time and the per-dataset SLURM runtime suggestion."""
    timed = [r for r in rows if r.hours is not None]
    hours = [r.hours for r in timed if r.hours is not None]
    out = [f"total: {len(timed)} run(s), {sum(hours):.1f} h one after another"]
    if device == "cpu":
        cpu_h = sum(h * r.cfg.threads for h, r in zip(hours, timed, strict=True))
        out.append(f"CPU-hours: {cpu_h:.1f} (each run's hours x its threads)")
    else:
        out.append(f"GPU-hours: {sum(hours):.1f} (one {device} per run)")
    threads = max(r.cfg.threads for r in timed)
    jobs = parallel_jobs(device, cores, threads, gpus)
    what = f"--cores {cores}" + (f" and --gpus {gpus}" if device != "cpu" else "")
    out.append(
        f"wall time with {what} ({jobs} job(s) at once, {threads} thread(s) each): "
        f"{makespan(hours, jobs):.1f} h"
    )
    untimed = len(rows) - len(timed)
    if untimed:
        out.append(f"not timed (--only): {untimed} run(s), not in the totals")
    for dataset in sorted({r.cfg.dataset for r in timed}):
        longest = max(r.hours or 0.0 for r in timed if r.cfg.dataset == dataset)
        minutes = max(1, math.ceil(longest * 60 * RUNTIME_MARGIN))
        out.append(
            f"workflow.resources.{dataset}.runtime: {minutes}  (minutes: its longest run, "
            f"{longest:.2f} h, x{RUNTIME_MARGIN})"
        )
    return out


def notes(
    device: str,
    threads: set[int],
    rounds: int,
    sources: dict[str, set[str]],
    steps: int | None = None,
) -> list[str]:
    """What the numbers are: device, rounds timed, synthetic data, where the sizes came from."""
    what = f"{rounds} round(s) after {WARMUP_ROUNDS} warm-up round"
    if steps is not None:
        what = (
            f"{rounds} sampled round(s) after {WARMUP_ROUNDS} warm-up round (one client per "
            f"budget, {steps} step(s) and {steps} validation batch(es) each, scaled to every "
            "client's real steps and images)"
        )
    out = [
        f"timed on {device} ({'/'.join(map(str, sorted(threads)))} thread(s) per run): {what}, "
        "on synthetic data of the real shapes (random pixels; speed does not depend on pixel "
        "values)",
        "includes training, validation and checkpoints; excludes data preparation, the evaluate "
        "jobs and best-model saves",
    ]
    for dataset, src in sorted(sources.items()):
        line = f"{dataset}: domain sizes from {', '.join(sorted(src))} counts"
        if "approximate" in src:
            line += f" (prepare {dataset} here for its exact sizes)"
        out.append(line)
    return out


# ---- command line -----------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "estimate",
        help="estimate the hours of every training run of a config on this machine",
        description=(
            "Time a few rounds of each distinct run of an experiment config on synthetic data of "
            "the real shapes, then print every run's estimated hours and the grid's total."
        ),
    )
    p.add_argument(
        "--configfile",
        "--config",
        dest="configfile",
        required=True,
        type=Path,
        help="experiment YAML file (e.g. config/paper.yaml)",
    )
    p.add_argument("--device", default="cpu", help="device to time on: cpu (default), cuda, ...")
    p.add_argument("--rounds", type=int, default=2, help="rounds timed per run (default 2)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="time one client per budget for this many steps instead of whole rounds, scaled "
        "to every client's steps (minutes instead of hours where a round is long)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per run instead of the config's"
    )
    p.add_argument(
        "--cores",
        type=int,
        default=None,
        help="cores for the parallel wall time (default 2 on cpu, 16 on a GPU)",
    )
    p.add_argument("--gpus", type=int, default=1, help="GPUs for the parallel wall time")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="time only these runs: DATASET, DATASET/SPLIT or DATASET/SPLIT/METHOD "
        "with shell wildcards (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
    p.set_defaults(func=run)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"--{name} {value} is invalid; allowed: an integer >= 1")


def run(args: argparse.Namespace) -> int:
    for name in ("rounds", "steps", "threads", "cores", "gpus"):
        _positive(name, getattr(args, name))
    runs = resolve_grid(args.configfile, args.device, args.threads)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows, sources = estimate(runs, args.rounds, args.only, log=log, steps=args.steps)
    cores = args.cores or (2 if args.device == "cpu" else 16)
    threads = {r.cfg.threads for r in rows if r.timing is not None}
    print("\n".join(notes(args.device, threads, args.rounds, sources, args.steps)))
    print(table_text([r for r in rows if r.timing is not None]))  # untimed: counted below
    print("\n".join(summary_lines(rows, args.device, cores, args.gpus)))
    if args.out is not None:
        from splitmix.atomic import atomic_write_text

        atomic_write_text(args.out, csv_text(rows))
        print(f"wrote {args.out}")
    return 0
