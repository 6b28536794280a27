"""Evaluate one finished training run into evaluation rows (``eval.csv`` beside the run).

Steps: read ``run.json`` -> RunConfig; rebuild the federation and the algorithm; load the
best-validation state from ``best.pt``; then for every width (default: the algorithm's
``eval_widths()``) and, for dual-BN models, every test lambda (default ``adv.test_lams`` of an
adversarially trained run): the model's cost, and each client's clean and PGD accuracy on its TEST
set (with per-domain means and the unweighted mean over clients, as the paper reports); finally the
communication, per-round times and validation curves of the run's logs, and the under-training
flags drawn from those rows (``evaluate.flags``).

One assembled model per (width, lambda) serves every client unless BN is local (FedBN): by the
``Algorithm.assemble`` contract the only client-specific part of an assembled model is the client's
local tensors, which exist only with ``bn='local'``. Assembling once instead of once per client
saves a state copy per client and, for HeteroFL, a prefix extraction.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from splitmix.config import AdvConfig, RunConfig, run_config_from_dict
from splitmix.data.clients import Client, Federation
from splitmix.errors import ConfigError, DataError
from splitmix.evaluate.accuracy import LARGE_BATCH, ClientAccuracy, client_accuracy, eval_batch_size
from splitmix.evaluate.communication import (
    LOG_REQUIRED,
    check_comm_rounds,
    check_rounds,
    communication_rows,
    curve_rows,
    read_log_csv,
)
from splitmix.evaluate.cost import model_cost
from splitmix.evaluate.deployment import DeployOptions, record, run_rows, width_rows
from splitmix.evaluate.flags import FlagRule, flag_rows
from splitmix.evaluate.robustness import attack_seed
from splitmix.evaluate.rows import RunKey, client_rows, to_frame, write_rows
from splitmix.fl.algorithm import Algorithm
from splitmix.models import DualBatchNorm, set_bn_mode
from splitmix.runfolder import BEST, COMM, COMM_COLUMNS, EVAL, LOG, read_record, write_eval_record


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate. ``None`` widths/lams mean the run's defaults (module docstring)."""

    widths: tuple[float, ...] | None = None
    lams: tuple[float, ...] | None = None
    attack: bool = True
    # The attack of every robust accuracy, the same for every run whatever it was trained with
    # (default: the paper's PGD-7, eps 8/255); only eps, steps and step_size are used.
    pgd: AdvConfig = AdvConfig()
    threads: int | None = None  # None = the run's ``threads``
    device: str | None = None  # None = the run's ``device``
    large_batch: int = LARGE_BATCH
    progress: bool = False
    flags: FlagRule = FlagRule()  # when a run counts as under-trained (evaluate.flags)
    deploy: DeployOptions = DeployOptions()  # storage and latency rows (evaluate.deployment)


@dataclass
class LoadedRun:
    """A training run's record, config, best checkpoint, federation and restored algorithm."""

    run_dir: Path
    record: dict[str, Any]
    cfg: RunConfig
    best_round: int
    algorithm: Algorithm
    federation: Federation

    @property
    def key(self) -> RunKey:
        c = self.cfg
        return RunKey(c.dataset, c.split, c.method, c.algorithm, c.seed)


# ---- loading ------------------------------------------------------------------------------------
def restore_run(
    run_dir: Path, *, federation: Federation | None = None, device: str | None = None
) -> LoadedRun:
    """Rebuild a run's algorithm at its best-validation state (``federation`` may be passed to
    skip rebuilding it, e.g. in tests; it must be the run's federation)."""
    from splitmix.fl.checkpoint import load_checkpoint
    from splitmix.fl.steps import make_generator
    from splitmix.methods import build_algorithm

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    cfg = run_config_from_dict(record["config"])
    if device is not None:
        cfg = dataclasses.replace(cfg, device=device)
    best_path = run_dir / BEST
    if not best_path.is_file():
        raise DataError(f"{best_path}: missing; the run never validated (check eval_every)")
    best = load_checkpoint(best_path)
    if best.get("config_hash") != record.get("config_hash"):
        raise DataError(
            f"{best_path}: written by config {best.get('config_hash')}, but run.json says "
            f"{record.get('config_hash')}; re-run training with --restart"
        )
    if federation is None:
        from splitmix.data.federation import build_federation

        federation = build_federation(cfg)
    alg = build_algorithm(cfg, federation)
    alg.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    alg.load_state_dict(best["algorithm"])
    return LoadedRun(run_dir, record, cfg, int(best["round"]), alg, federation)


# ---- test-set evaluation ---------------------------------------------------------------------
def is_dual(model: nn.Module) -> bool:
    return any(isinstance(m, DualBatchNorm) for m in model.modules())


def check_lams(lams: tuple[float, ...]) -> tuple[float, ...]:
    for lam in lams:
        if not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"test lambda {lam!r} is outside [0, 1]; use e.g. 0,0.2,0.5,0.8,1")
    return tuple(float(x) for x in lams)


def default_lams(cfg: RunConfig) -> tuple[float | None, ...]:
    """``adv.test_lams`` for an adversarially trained run, else no lambda."""
    return tuple(cfg.adv.test_lams) if cfg.adv.lam > 0 else (None,)


def _client_models(
    run: LoadedRun, clients: list[Client], build: Callable[[int | None], nn.Module]
) -> Iterator[tuple[Client, nn.Module]]:
    """``(client, inference model)`` per client; ``build(client index or None)`` assembles. One
    model, built and converted (``Algorithm.inference_model``) once, serves every client unless
    BN is local (module docstring)."""
    fast = run.algorithm.inference_model
    shared = None if run.cfg.bn == "local" else fast(build(None).eval())
    for c in clients:
        yield c, shared if shared is not None else fast(build(c.index).eval())


def validation_accuracy(run: LoadedRun) -> Callable[[Callable[[int | None], nn.Module]], float]:
    """The ``val_accuracy(build)`` that ``Algorithm.prepare_evaluation`` receives: mean over the
    clients with a validation set of the accuracy of ``build(client)`` on it, in validation
    batches (``val_batch_size``, as the engine validates)."""
    clients = [c for c in run.federation.clients if c.val_y.numel()]

    def val_accuracy(build: Callable[[int | None], nn.Module]) -> float:
        per = []
        for c, model in _client_models(run, clients, build):
            bs = eval_batch_size(model, run.cfg.val_batch)
            per.append(client_accuracy(model, c.val_x, c.val_y, bs).acc)
        return sum(per) / len(per) if per else 0.0

    return val_accuracy


def prepare_evaluation(run: LoadedRun) -> None:
    """Let the method make its validation-based choices (e.g. Split-Mix's base order)."""
    run.algorithm.prepare_evaluation(validation_accuracy(run))


def _client_results(
    run: LoadedRun, width: float, lam: float | None, attack: AdvConfig | None, large: int
) -> dict[str, ClientAccuracy]:
    """Test accuracy (and PGD accuracy) of every client with a test set, for one (width, lam)."""
    cfg, alg = run.cfg, run.algorithm
    device = torch.device(cfg.device)
    clients = [c for c in run.federation.clients if c.test_y.numel()]
    out: dict[str, ClientAccuracy] = {}
    for c, model in _client_models(run, clients, lambda k: _assemble(alg, width, lam, k)):
        torch.manual_seed(attack_seed(cfg.seed, width, lam, c.index))
        bs = eval_batch_size(model, cfg.test_batch_size, large)
        out[c.name] = client_accuracy(model, c.test_x.to(device), c.test_y.to(device), bs, attack)
    return out


def _assemble(alg: Algorithm, width: float, lam: float | None, client: int | None) -> nn.Module:
    model = alg.assemble(width, lam, client)
    model.eval()
    if lam is not None and is_dual(model):
        set_bn_mode(model, float(lam))  # the contract says assemble mixes; make sure it did
    return model


def model_rows(run: LoadedRun, options: EvalOptions) -> list[dict[str, Any]]:
    """Cost rows per width and accuracy rows per (width, lambda, client) with their means."""
    cfg, key = run.cfg, run.key
    widths = options.widths or tuple(float(w) for w in run.algorithm.eval_widths())
    requested = check_lams(options.lams) if options.lams is not None else default_lams(cfg)
    domains = {c.name: c.domain for c in run.federation.clients}
    rows: list[dict[str, Any]] = []
    attack = options.pgd if options.attack else None
    from tqdm import tqdm

    for width in tqdm(
        widths, desc="evaluate widths", disable=not options.progress, file=sys.stderr
    ):
        model = _assemble(run.algorithm, width, None, None)
        cost = model_cost(model, tuple(run.federation.input_shape))
        for metric in ("macs", "flops", "params", "state_numel", "model_bytes"):
            rows.append(key.row(metric, getattr(cost, metric), width=width))
        shape = tuple(run.federation.input_shape)
        device = torch.device(cfg.device)
        rows += width_rows(run.algorithm, key, width, shape, device, options.deploy)
        # a model without dual BN is the same at every lambda: evaluate it once, lam empty
        lams = [x if x is not None else 0.0 for x in requested] if is_dual(model) else [None]
        for lam in lams:
            res = _client_results(run, width, lam, attack, options.large_batch)
            common = {"width": width, "lam": lam}
            rows += client_rows(key, "acc", {c: r.acc for c, r in res.items()}, domains, **common)
            if options.attack:
                robust = {c: float(r.robust_acc) for c, r in res.items()}
                rows += client_rows(key, "robust_acc", robust, domains, **common)
    return rows


# ---- the whole run ---------------------------------------------------------------------------
def log_rows(run: LoadedRun) -> list[dict[str, Any]]:
    """Communication, timing and validation-curve rows from comm.csv, log.csv and run.json."""
    key = run.key
    comm = read_log_csv(run.run_dir / COMM, COMM_COLUMNS)
    log = read_log_csv(run.run_dir / LOG, LOG_REQUIRED)
    check_rounds(run.run_dir / LOG, log, run.cfg.rounds, run.cfg.eval_every)
    check_comm_rounds(run.run_dir / COMM, comm, run.cfg.rounds)
    names = [c.name for c in run.federation.clients]
    domains = {c.name: c.domain for c in run.federation.clients}
    probe = run.algorithm.assemble(run.algorithm.eval_widths()[-1], None, None)
    dual = is_dual(probe)  # the engine validated SA at lambda 0 and RA at 1 on dual-BN models
    rows = [key.row("best_round", run.best_round)]
    wall = run.record.get("wall_time_s")
    if wall is not None and math.isfinite(float(wall)):
        rows.append(key.row("run_seconds", float(wall)))
    rows += communication_rows(key, comm, run.best_round, names, domains)
    rows += curve_rows(key, log, 0.0 if dual else None, 1.0 if dual else None)
    return rows


def evaluate_run(
    run_dir: Path,
    options: EvalOptions = EvalOptions(),
    *,
    out: Path | None = None,
    federation: Federation | None = None,
) -> pd.DataFrame:
    """Evaluate ``run_dir`` and write its rows to ``out`` (default ``run_dir/eval.csv``)."""
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    run = restore_run(run_dir, federation=federation, device=options.device)
    torch.set_num_threads(int(options.threads or run.cfg.threads))
    try:
        logs = log_rows(run)  # first: a damaged log fails in seconds, not after the evaluation
        prepare_evaluation(run)
        rows = model_rows(run, options) + logs + run_rows(run.algorithm, run.key, options.deploy)
        measured = record(torch.device(run.cfg.device), options.deploy)
        n_val = sum(int(c.val_y.shape[0]) for c in run.federation.clients)
        rows += flag_rows(run.key, rows, run.federation.num_classes, options.flags, n_val)
        if options.attack:
            pgd = options.pgd
            rows += [
                run.key.row(f"pgd_{k}", getattr(pgd, k)) for k in ("eps", "steps", "step_size")
            ]
    finally:
        torch.set_num_threads(threads)
    rows.append(run.key.row("eval_seconds", time.perf_counter() - t0))
    df = to_frame(rows)
    out = Path(out) if out is not None else Path(run_dir) / EVAL
    write_rows(df, out)
    write_eval_record(out, measured)
    return df
