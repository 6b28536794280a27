"""The federated engine: rounds, client sampling, local training, validation, checkpoint/resume.

The engine owns the order of a round and knows no method by name (docs/design.md#one-interface):
every method-specific decision goes through the ``Algorithm`` verbs. One round is

    lr <- schedule(round); clients <- sample(round); tasks <- plan(round, clients)
    for each task: seed torch; model <- download; fresh SGD; local steps; update <- upload;
        fold update into the round's merge, then drop it (the server never holds the round)
    end the merge; every ``eval_every`` rounds: validate every client at every width

Everything random is drawn from a named stream of ``(seed, name)`` keyed by round and client
(``splitmix.seeding``), so a run resumed from a checkpoint redraws exactly what an uninterrupted run
would: the checkpoint needs the algorithm's state and the logs, nothing else.

Files written in the output directory (all atomically, see ``checkpoint.py``):
``checkpoint.pt`` and ``checkpoint-best.pt`` (resume state: the latest state and the best one so
far), ``best.pt`` (best-validation model, published when the run finishes), ``log.csv`` (one row per
round), ``comm.csv`` (one row per round x client), ``run.json`` (run record, written last: its
presence means the run is complete).

The resume state is kept apart from the published results because a workflow manager (Snakemake)
deletes a job's declared outputs (``best.pt``, the logs, ``run.json``) before it reruns the job:
everything a resume needs must survive that, and everything it deletes is rebuilt from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from splitmix.config import RunConfig
from splitmix.data.clients import Client, Federation
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import Algorithm, LossFn, RoundMerge, Task
from splitmix.fl.checkpoint import atomic_torch_save, load_checkpoint
from splitmix.fl.losses import make_loss, use_masked_loss
from splitmix.fl.runlog import CsvLog
from splitmix.fl.sampling import sample_clients
from splitmix.fl.schedule import lr_at
from splitmix.fl.steps import (  # noqa: F401 - the engine's batch rules, re-exported
    Augment,
    batch_spans,
    batches,
    derived_seed,
    local_steps,
    make_generator,
)
from splitmix.runfolder import (
    BEST,
    BEST_STATE,
    CHECKPOINT,
    COMM,
    COMM_COLUMNS,
    LOG,
    ONE_RUN_PER_WIDTH,
    OUTPUTS,
    RUN_RECORD,
    VAL_ACC,
    VAL_LOSS,
    VAL_RA,
    curve_column,
    log_columns,
    width_key,
    write_record,
)
from splitmix.seeding import rng
from splitmix.timefmt import format_duration
from splitmix.version import __version__

if TYPE_CHECKING:
    from splitmix.fl.batched import BatchedTraining

FORMAT = 1  # bump when the checkpoint layout changes


def check_train_sizes(fed: Federation) -> None:
    """One-line error for a client too small to train: a step needs at least 2 samples for
    batch-norm, and a client with none would contribute nothing yet keep its aggregation weight."""
    for c in fed.clients:
        n = int(c.train_y.shape[0])
        if n < 2:
            raise ConfigError(
                f"client {c.name} (index {c.index}) has {n} training sample(s), local training "
                "needs at least 2; use fewer clients (split_config.clients_per_domain), a larger "
                "split_config.percent or a smaller split_config.val_ratio"
            )


# ---- validation ---------------------------------------------------------------------------------
@dataclass
class ClientEval:
    """Sums over one client's validation set for one width."""

    n: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    robust: int = 0

    @property
    def acc(self) -> float:
        return self.correct / self.n

    @property
    def ra(self) -> float:
        return self.robust / self.n


def _eval_clean(
    model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, bs: int, loss_fn: LossFn
) -> ClientEval:
    res = ClientEval()
    with torch.no_grad():
        for start, end in batch_spans(int(y.shape[0]), bs):
            xb = x_u8[start:end].float().div_(255)
            yb = y[start:end]
            out = model(xb)
            res.loss_sum += float(loss_fn(out, yb)) * yb.shape[0]
            res.correct += int((out.argmax(1) == yb).sum())
            res.n += int(yb.shape[0])
    return res


def _eval_robust(model: nn.Module, x_u8: torch.Tensor, y: torch.Tensor, bs: int, adv) -> int:
    from splitmix.fl.adversarial import pgd  # lazy: only adversarial runs need torchattacks

    robust = 0
    for start, end in batch_spans(int(y.shape[0]), bs):
        xb = x_u8[start:end].float().div_(255)
        yb = y[start:end]
        x_adv = pgd(model, xb, yb, adv)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    return robust


# ---- the run ------------------------------------------------------------------------------------
class TrainingRun:
    """State of one training run; its methods are the steps of ``run_training``.

    Public so that tools which time or drive rounds (``splitmix estimate``, the benchmarks) call
    the engine's own steps: ``resume_or_start``, ``train_round(r)``, ``validate(r)``,
    ``save_checkpoint``. ``run_training`` is the way to train; this is the way to measure.
    """

    def __init__(
        self, algorithm: Algorithm, out_dir: Path, fed: Federation, progress: bool
    ) -> None:
        # the record and the hash cover every method parameter, the method's defaults included
        # (the algorithm resolved them: ``Algorithm.p``), so a changed default is a changed run
        cfg = dataclasses.replace(algorithm.cfg, method_params=dict(algorithm.p))
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        self.device = torch.device(cfg.device)
        check_train_sizes(fed)
        self.fed = _to_device(fed, self.device)
        self.hash = cfg.config_hash()
        self.loss_fn = make_loss(use_masked_loss(cfg.masked_loss, cfg.split_config.kind))
        self.augment = _augment(cfg)
        self.adv = cfg.adv.lam > 0
        self.algorithm = algorithm
        self.widths = sorted(float(w) for w in self.algorithm.eval_widths())
        if not self.widths:
            raise ConfigError(f"algorithm {cfg.algorithm!r} validates no width (eval_widths empty)")
        self.log = CsvLog(self.out / LOG, log_columns(self.widths, self.adv))
        self.comm = CsvLog(self.out / COMM, COMM_COLUMNS)
        self.start_round = 0
        self.best_metric = -math.inf
        self.best_round = -1
        self.wall_before = 0.0  # wall time of earlier (interrupted) invocations

    # -- checkpoint / resume --
    def resume_or_start(self, restart: bool, discard_stale: bool = False) -> None:
        """Continue from ``checkpoint.pt`` when it belongs to this config, else start afresh.

        ``discard_stale``: a checkpoint of another config is stale state of this folder (the
        workflow reruns a run whose settings changed) and is dropped, instead of refused.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(self.out)
        if removed:
            self.say(f"removed {removed} temporary file(s) left by an interrupted write")
        if restart:
            self.discard_outputs()
        self.algorithm.init_global(make_generator(self.cfg.seed, "init", torch.device("cpu")))
        ckpt = self.usable_checkpoint(discard_stale)
        if ckpt is not None:
            self.algorithm.load_state_dict(ckpt["algorithm"])
            self.start_round = int(ckpt["round"]) + 1
            self.best_metric = float(ckpt["best_metric"])
            self.best_round = int(ckpt["best_round"])
            self.wall_before = float(ckpt["wall_time"])
            self.log.rows = list(ckpt["log_rows"])
            self.comm.rows = list(ckpt["comm_rows"])
            self.say(f"resuming after round {self.start_round} of {self.cfg.rounds} ({CHECKPOINT})")
        else:  # a fresh start never inherits files of an earlier run in the same directory
            for name in (BEST_STATE, BEST, RUN_RECORD):
                (self.out / name).unlink(missing_ok=True)
            self.say(f"starting round 1 of {self.cfg.rounds}")
        # drop rows a crashed run appended after its last checkpoint; they will be recomputed
        self.log.rewrite()
        self.comm.rewrite()

    def usable_checkpoint(self, discard_stale: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (none, stale and discarded, or incomplete)."""
        ckpt_path = self.out / CHECKPOINT
        if not ckpt_path.exists():
            return None
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.get("format") != FORMAT:
            raise ConfigError(
                f"{ckpt_path} has checkpoint format {ckpt.get('format')!r}, this version "
                f"writes {FORMAT}; use a new --out directory or pass --restart"
            )
        if ckpt.get("config_hash") != self.hash:
            if discard_stale:
                self.say(f"{CHECKPOINT} belongs to an earlier config; starting over")
                self.discard_outputs()
                return None
            raise ConfigError(
                f"{ckpt_path} was written by a different config (hash "
                f"{ckpt.get('config_hash')}, this run {self.hash}); use a new --out directory "
                "or pass --restart to start over"
            )
        if int(ckpt["best_round"]) >= 0 and not self.has_best_state():
            # without the best model so far, best.pt could not be rebuilt consistently: the
            # rounds are deterministic, so starting over gives the very same run
            self.say(f"{BEST_STATE} is missing; starting over")
            self.discard_outputs()
            return None
        return ckpt

    def has_best_state(self) -> bool:
        """Whether the best model so far is on disk (runs of older versions kept it in best.pt)."""
        state, best = self.out / BEST_STATE, self.out / BEST
        if not state.exists() and best.exists():
            _publish(best, state)
        return state.exists()

    def discard_outputs(self) -> None:
        for name in OUTPUTS:
            (self.out / name).unlink(missing_ok=True)

    def say(self, text: str) -> None:
        """A status line in the job's log (stderr), unless progress output is off."""
        if self.progress:
            print(f"{self.cfg.method} {self.cfg.dataset}/{self.cfg.split} seed{self.cfg.seed}: "
                  f"{text}", file=sys.stderr, flush=True)  # fmt: skip

    def save_checkpoint(self, round_idx: int, wall: float) -> None:
        atomic_torch_save(
            {
                "format": FORMAT,
                "config_hash": self.hash,
                "config": self.cfg.to_dict(),
                "round": round_idx,
                "algorithm": self.algorithm.state_dict(),
                "best_metric": self.best_metric,
                "best_round": self.best_round,
                "wall_time": wall,
                "log_rows": self.log.rows,
                "comm_rows": self.comm.rows,
            },
            self.out / CHECKPOINT,
        )
        self.log.rewrite()
        self.comm.rewrite()

    # -- one round --
    def train_round(self, r: int) -> dict[str, Any]:
        cfg, alg = self.cfg, self.algorithm
        t0 = time.perf_counter()
        lr = lr_at(cfg, r)
        clients = sample_clients(cfg.seed, r, len(self.fed.clients), cfg.participation)
        # every task carries its round, whatever the method's plan filled in
        tasks = [
            t if t.round == r else dataclasses.replace(t, round=r)
            for t in alg.plan(r, clients, rng(cfg.seed, f"plan/{r}"))
        ]
        merge = RoundMerge(alg, r)
        comm_rows = []
        loss_sum, steps_total = 0.0, 0
        batched = self.batched_training(tasks, lr, r)
        for i, task in enumerate(tasks):
            client = self.fed.clients[task.client]
            # a batched task's clock starts with its share of its group's training, done above
            tc = time.perf_counter() - (batched.seconds(i) if batched is not None else 0.0)
            torch.manual_seed(derived_seed(cfg.seed, f"torch/{r}/{task.client}"))
            model = alg.download(task)
            down = int(alg.download_bytes(task, model))
            if batched is not None and i in batched:  # trained with its group: write it in
                s, n = batched.write(i, model)
            else:
                s, n = self.train_client(model, task, client, lr, r)
            update = alg.upload(task, model)
            del model
            bytes_up = update.nbytes()
            merge.add(task, update, float(client.weight))
            del update  # folded in: memory stays at one update, not the round's
            loss_sum += s
            steps_total += n
            comm_rows.append(
                {
                    "round": r,
                    "client": task.client,
                    "bytes_down": down,
                    "bytes_up": bytes_up,
                    "seconds": time.perf_counter() - tc,
                }
            )
        merge.finish()
        row: dict[str, Any] = {
            "round": r,
            "lr": lr,
            "train_loss": loss_sum / steps_total if steps_total else math.nan,
            "bytes_up": sum(c["bytes_up"] for c in comm_rows),
            "bytes_down": sum(c["bytes_down"] for c in comm_rows),
            "n_clients": len(tasks),
        }
        if (r + 1) % cfg.eval_every == 0 or r == cfg.rounds - 1:
            row.update(self.validate(r))
        row["seconds"] = time.perf_counter() - t0
        self.log.append([row])
        self.comm.append(comm_rows)
        return row

    def batched_training(self, tasks: list[Task], lr: float, r: int) -> BatchedTraining | None:
        """The round's client-batched training (``client_batching``, splitmix/fl/batched.py), or
        None: sequential ``train_client`` is the reference and the default."""
        if not self.cfg.client_batching:
            return None
        from splitmix.fl.batched import BatchedTraining  # it imports this module's helpers

        return BatchedTraining(
            self.algorithm, tasks, self.fed.clients, cfg=self.cfg, lr=lr, round_idx=r,
            loss_fn=self.loss_fn, augment=self.augment, device=self.device,
        )  # fmt: skip

    def train_client(
        self, model: nn.Module, task: Task, client: Client, lr: float, r: int
    ) -> tuple[float, int]:
        """Local SGD of one client; returns (sum of step losses, number of steps)."""
        cfg, alg, dev = self.cfg, self.algorithm, self.device
        params = [p for p in model.parameters() if p.requires_grad]
        steps = local_steps(int(client.train_y.shape[0]), cfg.batch_size, cfg.local_epochs)
        if not params or steps == 0:
            return 0.0, 0
        # a fresh optimizer per client per round: no momentum carried over
        # (docs/paper.md#federated-loop)
        opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        g_batch = make_generator(cfg.seed, f"batches/{r}/{task.client}", torch.device("cpu"))
        g_aug = make_generator(cfg.seed, f"augment/{r}/{task.client}", dev)
        xs, ys = client.train_x, client.train_y
        total = 0.0
        for idx in batches(int(ys.shape[0]), cfg.batch_size, steps, g_batch):
            idx = idx.to(dev, non_blocking=True)
            x = xs.index_select(0, idx).float().div_(255)
            y = ys.index_select(0, idx)
            if self.augment is not None:
                x = self.augment(x, g_aug)
            opt.zero_grad(set_to_none=True)
            total += float(alg.train_step(model, task, x, y, self.loss_fn))
            opt.step()
        return total, steps

    def validate(self, r: int) -> dict[str, float]:
        """Every client's val set at every width: mean accuracy/loss (and RA) over clients, and
        the selection metric = mean over clients of the widest width's (1-lam)SA + lam RA.

        Batches of ``cfg.val_batch`` (the training batch size unless set), as the original
        validates with its training loader's batch size: with batch-statistics BN the accuracy
        depends on it, and so do the best round and Split-Mix's base order."""
        cfg = self.cfg
        bs = cfg.val_batch
        torch.manual_seed(derived_seed(cfg.seed, f"val/{r}"))  # PGD random starts
        lam_clean = 0.0 if self.adv else None
        per: dict[float, list[ClientEval]] = {w: [] for w in self.widths}
        clients = [c for c in self.fed.clients if c.val_y.numel()]
        for w in self.widths:
            # one assembled model at a time (assemble may reuse one module): all clean passes,
            # then all robust ones
            clean = self._val_models(w, lam_clean, clients)
            for client in clients:
                res = _eval_clean(clean(client), client.val_x, client.val_y, bs, self.loss_fn)
                per[w].append(res)
            if self.adv:
                robust = self._val_models(w, 1.0, clients)
                for client, res in zip(clients, per[w], strict=True):
                    model = robust(client)
                    res.robust = _eval_robust(model, client.val_x, client.val_y, bs, cfg.adv)
        if not per[self.widths[0]]:
            raise ConfigError(
                f"no client has validation data (split_config.val_ratio="
                f"{cfg.split_config.val_ratio}); raise val_ratio"
            )
        out: dict[str, float] = {}
        for w, evals in per.items():
            out[curve_column(VAL_ACC, w)] = float(np.mean([e.acc for e in evals]))
            out[curve_column(VAL_LOSS, w)] = float(np.mean([e.loss_sum / e.n for e in evals]))
            if self.adv:
                out[curve_column(VAL_RA, w)] = float(np.mean([e.ra for e in evals]))
        lam = float(cfg.adv.lam)
        widest = per[self.widths[-1]]
        out["metric"] = float(np.mean([(1 - lam) * e.acc + lam * e.ra for e in widest]))
        return out

    def _val_models(
        self, width: float, lam: float | None, clients: list[Client]
    ) -> Callable[[Client], nn.Module]:
        """``client -> eval model`` of ``width`` (dual BN mixed by ``lam``) on the fast path
        (``Algorithm.inference_model``: channels-last, Split-Mix's fused ensembles), as test
        evaluation runs it. By the ``assemble`` contract a model differs between clients only in
        their local tensors, so without local BN one converted model serves every client."""
        alg = self.algorithm

        def build(client: int | None) -> nn.Module:
            model = alg.assemble(width, lam, client)
            model.eval()
            return alg.inference_model(model)

        if self.cfg.bn == "local" or not clients:
            return lambda c: build(c.index)
        shared = build(None)
        return lambda c: shared

    def maybe_save_best(self, row: dict[str, Any]) -> None:
        metric = row.get("metric")
        if metric is None or not metric > self.best_metric:
            return
        self.best_metric, self.best_round = float(metric), int(row["round"])
        atomic_torch_save(
            {
                "format": FORMAT,
                "config_hash": self.hash,
                "config": self.cfg.to_dict(),
                "round": self.best_round,
                "metric": self.best_metric,
                "algorithm": self.algorithm.state_dict(),
            },
            self.out / BEST_STATE,
        )

    def publish_best(self) -> None:
        """``best.pt`` of the finished run: the best state, linked (no second copy on disk)."""
        if self.best_round >= 0:
            _publish(self.out / BEST_STATE, self.out / BEST)

    def write_record(self, wall: float) -> dict[str, Any]:
        # the algorithm's capabilities beside its own facts: the report reads them from here,
        # never from the live registry or the method's name
        capabilities = {ONE_RUN_PER_WIDTH: bool(type(self.algorithm).one_run_per_width)}
        record = {
            "config": self.cfg.to_dict(),
            "config_hash": self.hash,
            "versions": _versions(),
            "algorithm": {**self.algorithm.describe(), **capabilities},
            "best_round": self.best_round,
            "best_metric": self.best_metric,
            "rounds": self.cfg.rounds,
            "wall_time_s": wall,
            "federation": federation_counts(self.fed),
        }
        write_record(self.out, record)  # atomic and durable: its presence marks the run complete
        return record


# ---- files --------------------------------------------------------------------------------------
def remove_stale_temporaries(out: Path) -> int:
    """Delete hidden ``.NAME.*.tmp`` files of this run's own outputs; returns how many.

    ``splitmix.atomic`` writes through such a temporary and renames it, so only a process killed
    mid-write (SIGKILL, OOM) leaves one behind; nothing ever reads them.
    """
    removed = 0
    for name in OUTPUTS:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _publish(src: Path, dst: Path) -> None:
    """Make ``dst`` hold ``src``'s bytes atomically: a hard link where the filesystem allows it
    (a model file costs its bytes once), a copy elsewhere."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---- setup helpers ------------------------------------------------------------------------------
def _augment(cfg: RunConfig) -> Augment | None:
    from splitmix.data.augment import get_augment, no_augment

    fn = get_augment(cfg.augment, cfg.dataset)
    return None if fn is no_augment else fn


def _to_device(fed: Federation, device: torch.device) -> Federation:
    """Move every client's tensors to ``device`` once, so batches never cross the bus."""
    if device.type == "cpu":
        return fed
    names = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
    for c in fed.clients:
        for name in names:
            setattr(c, name, getattr(c, name).to(device))
    return fed


def federation_counts(fed: Federation) -> dict[str, Any]:
    """Summary counts recorded in ``run.json``."""

    def total(attr: str) -> int:
        return int(sum(getattr(c, attr).shape[0] for c in fed.clients))

    return {
        "dataset": fed.dataset,
        "split": fed.split,
        "domains": list(fed.domains),
        "num_clients": len(fed.clients),
        "num_classes": fed.num_classes,
        "input_shape": list(fed.input_shape),
        "n_train": total("train_y"),
        "n_val": total("val_y"),
        "n_test": total("test_y"),
        "budgets": {width_key(b): int((fed.budgets == b).sum()) for b in np.unique(fed.budgets)},
    }


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        __name__.partition(".")[0]: __version__,  # the package (not a method) name
    }


# ---- public API -------------------------------------------------------------------------------
def train(
    algorithm: Algorithm,
    federation: Federation,
    out_dir: Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    restart: bool = False,
    discard_stale: bool = False,
) -> dict[str, Any]:
    """Train ``algorithm`` (built for ``federation``, not yet initialised) into ``out_dir``,
    resuming from ``out_dir/checkpoint.pt`` when present. The engine receives the method built;
    ``splitmix.training.run_training`` builds it from a config.

    ``stop_after`` simulates a kill once that many rounds (in total) are done: the run returns
    without its end-of-run checkpoint, exactly like a process killed between checkpoints.
    ``restart`` deletes earlier outputs in ``out_dir`` first; ``discard_stale`` drops a checkpoint
    of another config instead of refusing it. ``progress`` shows a bar on a terminal and one plain
    line per round elsewhere (a job's log file). Returns a summary dict.
    """
    cfg = algorithm.cfg
    torch.set_num_threads(cfg.threads)
    run = TrainingRun(algorithm, Path(out_dir), federation, progress)
    run.resume_or_start(restart, discard_stale)
    t_start = time.perf_counter()

    def wall() -> float:
        return run.wall_before + time.perf_counter() - t_start

    report = _progress(run, progress, t_start)
    stopped = False
    last = run.start_round - 1
    try:
        for r in range(run.start_round, cfg.rounds):
            row = run.train_round(r)
            run.maybe_save_best(row)
            last = r
            report.round_done(r, row)
            if (r + 1) % cfg.checkpoint_every == 0 and r + 1 < cfg.rounds:
                run.save_checkpoint(r, wall())
            if stop_after is not None and r + 1 >= stop_after and r + 1 < cfg.rounds:
                stopped = True
                break
    except OSError as exc:
        if exc.filename is None:  # an append to a log on a full disk names no file: name the run
            raise type(exc)(exc.errno, exc.strerror, str(run.out)) from None
        raise
    finally:
        report.close()
    result = {
        "out_dir": str(run.out),
        "config_hash": run.hash,
        "rounds_done": last + 1,
        "stopped": stopped,
        "best_round": run.best_round,
        "best_metric": run.best_metric,
    }
    if stopped:
        return result
    run.save_checkpoint(cfg.rounds - 1, wall())
    run.publish_best()
    record = run.write_record(wall())
    result["wall_time_s"] = record["wall_time_s"]
    return result


# ---- progress -----------------------------------------------------------------------------------
def eta_seconds(elapsed: float, done: int, remaining: int) -> float:
    """Time left if the remaining rounds take as long as this invocation's rounds did."""
    return elapsed / done * remaining if done > 0 else math.nan


class _Lines:
    """One plain line per round on stderr: a job's log is readable while it grows, and its line
    count says how many rounds this invocation trained."""

    def __init__(self, run: TrainingRun, t_start: float) -> None:
        self.run, self.t_start, self.first = run, t_start, run.start_round

    def round_done(self, r: int, row: dict[str, Any]) -> None:
        run, total = self.run, self.run.cfg.rounds
        elapsed = time.perf_counter() - self.t_start
        left = eta_seconds(elapsed, r + 1 - self.first, total - r - 1)
        text = f"round {r + 1}/{total}"
        if row.get("metric") is not None:
            acc = row[curve_column(VAL_ACC, run.widths[-1])]
            text += f" val_acc {acc:.4f} best {run.best_metric:.4f}"
        text += f" elapsed {format_duration(elapsed)} eta {format_duration(left)}"
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _Bar:
    """A tqdm bar on a terminal."""

    def __init__(self, run: TrainingRun, enabled: bool) -> None:
        from tqdm import tqdm

        cfg = run.cfg
        self.run = run
        self.bar = tqdm(
            total=cfg.rounds,
            initial=run.start_round,
            disable=not enabled,
            desc=f"{cfg.method} {cfg.dataset}/{cfg.split} seed{cfg.seed}",
            unit="round",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def round_done(self, r: int, row: dict[str, Any]) -> None:
        self.bar.update(1)
        if row.get("metric") is not None:
            acc = row[curve_column(VAL_ACC, self.run.widths[-1])]
            self.bar.set_postfix(
                val=f"{acc:.3f}", best=f"{self.run.best_metric:.3f}", refresh=False
            )

    def close(self) -> None:
        self.bar.close()


def _progress(run: TrainingRun, enabled: bool, t_start: float) -> _Lines | _Bar:
    if enabled and not sys.stderr.isatty():
        return _Lines(run, t_start)
    return _Bar(run, enabled)
