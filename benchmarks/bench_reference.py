"""Issue 13's reference speed table: our engine against the original Split-Mix code's seconds per
round, and against the arithmetic floor of the same steps (docs/speed.md).

Configuration (the issue's): Digits with the three domains of the offline mirror (MNIST, USPS,
MNIST-M; FedBN recipe), ``split_config`` kind feature, 2 clients per domain (6 clients), percent
0.3, val_ratio 0.5, batch 32, 1 local epoch, cosine lr, batch-statistics BN, budgets 8-4-2-1,
seed 1. Every other value is the method's entry in ``config/paper.yaml`` (lr, momentum, weight
decay, Split-Mix's atom and rescaling, the AT settings). Rows:

========================  ==============================================================
row (``--only``)          run
========================  ==============================================================
``splitmix``              paper entry ``splitmix`` (atom 1/8, lr 0.01)
``splitmix-fused``        the same with ``fused: true`` (one batched pass per client, same
                          mathematics up to float order; not in the issue's table, compared
                          with the same original figures)
``sheterofl``             paper entry ``sheterofl`` (per-width weighting)
``fedavg-x0.125``         paper entry ``fedavg_x0.125``
``fedavg-x1``             paper entry ``fedavg_x1``
``splitmix-at``           paper entry ``splitmix_dbn`` (atom 1/8, rescale off, dual BN, adv lam
                          0.5, PGD-7 at eps 8/255, step (10/255)/7) with ``bn: tracked``
========================  ==============================================================

Columns, seconds per round averaged over rounds 2.. (the first round warms up and is left out):

* **ours**: ``splitmix.fl.engine.run_training`` with ``--threads`` torch threads (2 like the
  original). train = the sum of the round's per-client ``seconds`` in ``comm.csv`` (download,
  local training, upload and folding the upload into the merge); val = the round's ``seconds`` in
  ``log.csv`` minus that (planning, ending the merge, validating every client at every width).
* **floor**: a bare PyTorch loop doing the SAME SGD steps one client after another, with none of
  the engine: the method's model copied into plain ``nn.Module`` s (the library's layer classes),
  a fresh ``torch.optim.SGD`` per client, the engine's batches (same random streams), the
  engine's plans (Split-Mix's sampled bases, drawn before timing starts), and the same starting
  state. Per row, train does:

  - FedAvg xw: load the server state into one DigitModel xw; per batch forward, cross-entropy,
    backward, step; add ``weight * state`` to a running sum.
  - Split-Mix (both rows): per sampled base, load it into a DigitModel x1/8 work copy; per batch
    each base's own forward, loss and backward (k sequential small networks), one SGD step over
    the client's bases; add ``weight * state`` to each base's running sum. With AT each base's
    loss is ``0.5 CE(clean BN, x) + 0.5 CE(noise BN, x_adv)``, ``x_adv`` a bare 7-step L-inf PGD
    (random start, sign steps, projection) against that base's noise path in eval mode.
  - SHeteroFL: per client one slimmable DigitModel holding only its budget's prefix blocks (the
    sub-model a client receives, so gradients and SGD are the size of its budget, not of the
    full model); per batch each width <= budget, ascending, forward, loss, backward; one step;
    add the blocks, weighted ``client weight x number of widths``, to masked running sums.

  Val does the merge (divide the sums; masked for SHeteroFL; integer BN counters copied from the
  last client) and then validates every client at every width on the plain assembled model in
  NCHW, no fast path: FedAvg's DigitModel; Split-Mix's mean of the first ``w / atom`` bases'
  logits; SHeteroFL's slimmable server model at ``set_width(w)``. Batches of the training batch
  size (as the engine and the original), cross-entropy and accuracy per batch. The AT row adds,
  per width, a robust pass: bare PGD-7 against the noise-BN ensemble, then its accuracy.

* **speed-up** = original / ours; **ours/floor** = ours / floor. Verdict per column: ``ok`` when
  ours is at least 3x faster than the original, or (the arithmetic bound) at most 1.1x the floor;
  else ``MISSES``. The original figures are issue 13's (the original code, this machine kind,
  2 torch threads). A footer line per row gives the largest difference between the engine's and
  the floor's final server states, to show both did the same steps: 0 where the floor runs the
  engine's kernels; fused Split-Mix and SHeteroFL (views of the full model in the engine,
  contiguous sub-tensors here) sum in another order, and at lr 0.1 those last bits grow over a
  round's 18 steps to ~1e-2 (docs/speed.md).

Data: prepare the three domains once (offline, from the mirror; ``--prepare`` does it for you):

    for d in mnist usps mnistm; do python -m splitmix data prepare digits --domain $d \\
        --source raw --mirror /path/to/mirror --offline --root /tmp/digits; done
    PYTHONPATH=. .venv/bin/python benchmarks/bench_reference.py --root /tmp/digits
    PYTHONPATH=. .venv/bin/python benchmarks/bench_reference.py --root /tmp/digits \\
        --only fedavg-x1 sheterofl --rounds 4

Run it on a quiet machine: the load averages printed before and after say whether it was.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _common import client_batches, fresh_algorithm
from torch import nn

from splitmix.config import AdvConfig, RunConfig
from splitmix.data.clients import Client, Federation
from splitmix.fl.algorithm import Algorithm, Task
from splitmix.fl.engine import batch_spans, derived_seed
from splitmix.fl.sampling import sample_clients
from splitmix.fl.schedule import lr_at
from splitmix.models import prefix_blocks, set_bn_mode
from splitmix.seeding import rng
from splitmix.training import run_training

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
DOMAINS = ("mnist", "usps", "mnistm")
SPEEDUP = 3.0  # the goal
FLOOR_SLACK = 1.1  # ...or within this factor of the arithmetic floor
#: ``--clock``: wall time (the issue's measure, for a quiet machine) or this process's CPU time
#: (an estimate that other processes disturb less; meaningful with --threads 1, since idle
#: OpenMP threads spinning on a busy machine count as CPU time)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class Row:
    key: str  # --only name
    label: str
    method: str  # entry of config/paper.yaml
    sets: tuple[str, ...]  # overrides beyond the common ones
    original: tuple[float, float]  # issue 13: seconds per round (train, val) of the original


ROWS = (
    Row("splitmix", "Split-Mix (atom 1/8)", "splitmix", (), (2.83, 5.39)),
    Row(
        "splitmix-fused",
        "Split-Mix fused (atom 1/8)",
        "splitmix",
        ("method_params.fused=true",),
        (2.83, 5.39),
    ),
    Row("sheterofl", "SHeteroFL", "sheterofl", (), (12.41, 6.36)),
    Row("fedavg-x0.125", "FedAvg x1/8", "fedavg_x0.125", (), (0.80, 0.43)),
    Row("fedavg-x1", "FedAvg x1", "fedavg_x1", (), (13.13, 3.70)),
    Row(
        "splitmix-at",
        "Split-Mix, dual-BN AT lambda 0.5",
        "splitmix_dbn",
        ("bn=tracked",),
        (18.7, 75.8),
    ),
)
ROW_KEYS = tuple(r.key for r in ROWS)


def row_config(
    row: Row, *, root: str, rounds: int, threads: int, device: str, seed: int = 1
) -> RunConfig:
    """The validated run of ``row``: its paper entry on digits/feature with the issue's split."""
    from splitmix.experiment import load_experiment, resolve_run

    sets = [
        f"rounds={rounds}",
        f"threads={threads}",
        f"device={device}",
        f"data_root={root}",
        "split_config.clients_per_domain=2",
        f"split_config.domains=[{','.join(DOMAINS)}]",
        "eval_every=1",  # the original validates every round
        "checkpoint_every=1000000",  # the engine's final checkpoint is outside the rounds
        *row.sets,
    ]
    return resolve_run(load_experiment(PAPER), "digits", "feature", row.method, seed, sets=sets)


# ---- the floor: bare PyTorch, no engine ---------------------------------------------------------
def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    adv: AdvConfig,
) -> torch.Tensor:
    """Bare L-inf PGD on an eval-mode ``model``, step for step torchattacks' PGD (uniform random
    start from the global RNG, sign steps, projection onto the eps-ball and [0, 1])."""
    eps, alpha = float(adv.eps), float(adv.step_size)
    x = x.detach()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(adv.steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: AdvConfig) -> torch.Tensor:
    """``(1 - lam) CE(clean BN, x) + lam CE(noise BN, x_adv)`` of one train-mode network, x_adv
    crafted against its noise path in eval mode (as ``fl.adversarial.adversarial_loss``)."""
    lam = float(adv.lam)
    dual = set_bn_mode(model, "clean") > 0
    loss = (1.0 - lam) * F.cross_entropy(model(x), y) if lam < 1.0 or dual else 0.0
    set_bn_mode(model, "noise")
    # the attack in eval mode without parameter gradients, as the original's
    # ctx_noparamgrad_and_eval (and the engine's eval_no_param_grad)
    model.eval().requires_grad_(False)
    x_adv = pgd(model, x, y, adv)
    model.train().requires_grad_(True)
    loss = loss + lam * F.cross_entropy(model(x_adv), y)
    set_bn_mode(model, "clean")
    assert isinstance(loss, torch.Tensor)
    return loss


class Floor:
    """The round loop of a bare FL simulation; subclasses hold the models (module docstring)."""

    clock: Callable[[], float] = time.perf_counter

    def __init__(self, cfg: RunConfig, fed: Federation, alg: Algorithm) -> None:
        from splitmix.data.augment import default_augment

        augment = cfg.augment or default_augment(cfg.dataset)
        if cfg.bn == "local" or augment != "none" or cfg.split_config.kind == "class":
            raise ValueError("the floor covers shared BN, no augmentation, plain cross-entropy")
        self.cfg, self.fed = cfg, fed
        self.device = torch.device(cfg.device)
        self.widths = sorted(float(w) for w in alg.eval_widths())
        self.adv = cfg.adv if cfg.adv.lam > 0 else None
        # the engine's plans, drawn in round order before any timing (Split-Mix's sampler moves)
        self.plans = [
            alg.plan(
                r,
                sample_clients(cfg.seed, r, len(fed.clients), cfg.participation),
                rng(cfg.seed, f"plan/{r}"),
            )
            for r in range(cfg.rounds)
        ]
        self.train_losses: list[float] = []

    # what a subclass provides
    def begin_round(self) -> None: ...

    def train_client(self, task: Task, client: Client, lr: float, r: int) -> torch.Tensor:
        """Download, local steps, fold the upload into the sums; returns the sum of step losses."""
        raise NotImplementedError

    def merge(self) -> None: ...

    def eval_model(self, width: float, lam: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def server_state(self) -> dict[str, torch.Tensor]:
        """The server state keyed like the engine's algorithm state (to compare the two)."""
        raise NotImplementedError

    # the loop
    def sgd(self, params: list[nn.Parameter], lr: float) -> torch.optim.SGD:
        cfg = self.cfg
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def steps(
        self,
        opt: torch.optim.Optimizer,
        client: Client,
        r: int,
        step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for x, y in client_batches(self.cfg, client, r, self.device):
            opt.zero_grad(set_to_none=True)
            total += step(x, y)  # forward and backward; the summed loss, not synchronised
            opt.step()
        return total

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.adv is not None:
            return at_loss(model, x, y, self.adv)
        return F.cross_entropy(model(x), y)

    def run_round(self, r: int) -> tuple[float, float]:
        """One round; returns (train seconds, merge + validation seconds)."""
        cfg = self.cfg
        lr = lr_at(cfg, r)
        t0 = self.clock()
        self.begin_round()
        loss, steps = torch.zeros(()), 0
        for task in self.plans[r]:
            client = self.fed.clients[task.client]
            # as the engine: PGD random starts come from the global RNG, seeded per client
            torch.manual_seed(derived_seed(cfg.seed, f"torch/{r}/{task.client}"))
            loss = loss + self.train_client(task, client, lr, r).cpu()
            steps += len(batch_spans(int(client.train_y.shape[0]), cfg.batch_size))
        _sync(self.device)
        t1 = self.clock()
        self.merge()
        self.validate(r)
        _sync(self.device)
        self.train_losses.append(float(loss) / max(steps * cfg.local_epochs, 1))
        return t1 - t0, self.clock() - t1

    def validate(self, r: int) -> None:
        cfg = self.cfg
        torch.manual_seed(derived_seed(cfg.seed, f"val/{r}"))  # PGD random starts, as the engine
        clients = [c for c in self.fed.clients if c.val_y.numel()]
        self.val_acc: dict[float, float] = {}
        for w in self.widths:
            model = self.eval_model(w, 0.0 if self.adv is not None else None)
            accs = [self.eval_clean(model, c) for c in clients]
            self.val_acc[w] = float(np.mean(accs))
            if self.adv is not None:
                model = self.eval_model(w, 1.0)
                for c in clients:
                    self.eval_robust(model, c, self.adv)

    def eval_clean(self, model: Callable[[torch.Tensor], torch.Tensor], c: Client) -> float:
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for s, e in batch_spans(int(c.val_y.shape[0]), self.cfg.val_batch):
                x, y = c.val_x[s:e].float().div_(255), c.val_y[s:e]
                out = model(x)
                # unused here, but the engine computes it (val_loss), so the floor does too
                loss_sum += float(F.cross_entropy(out, y)) * (e - s)
                correct += int((out.argmax(1) == y).sum())
        return correct / int(c.val_y.shape[0])

    def eval_robust(
        self, model: Callable[[torch.Tensor], torch.Tensor], c: Client, adv: AdvConfig
    ) -> float:
        robust = 0
        for s, e in batch_spans(int(c.val_y.shape[0]), self.cfg.val_batch):
            x, y = c.val_x[s:e].float().div_(255), c.val_y[s:e]
            x_adv = pgd(model, x, y, adv)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
        return robust / int(c.val_y.shape[0])

    def run(self, rounds: int) -> list[tuple[float, float]]:
        return [self.run_round(r) for r in range(rounds)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class UnitsFloor(Floor):
    """FedAvg (one unit, the dense model) and Split-Mix (one unit per base): a client trains
    whole units, each averaged over the clients that trained it."""

    def __init__(self, cfg: RunConfig, fed: Federation, alg: Algorithm) -> None:
        super().__init__(cfg, fed, alg)
        server = alg.server  # type: ignore[attr-defined]
        self.splitmix = cfg.algorithm == "splitmix"
        if self.splitmix:
            self.atom = float(alg.atom)  # type: ignore[attr-defined]
            units = [copy.deepcopy(b) for b in server.bases]
        else:
            units = [copy.deepcopy(server)]
        self.units = [u.to(self.device).eval() for u in units]
        self.unit_state = [u.state_dict() for u in self.units]
        most = max(len(self.unit_ids(t)) for plan in self.plans for t in plan)
        self.work = [copy.deepcopy(self.units[0]).train() for _ in range(most)]

    def unit_ids(self, task: Task) -> tuple[int, ...]:
        return tuple(task.bases) if self.splitmix else (0,)

    def begin_round(self) -> None:
        self.sums: dict[int, dict[str, torch.Tensor]] = {}
        # float32 weight sums, rounded as the server's merge rounds them: with PGD's sign steps
        # a last-bit difference in the state grows into a visibly different run
        self.wsum: dict[int, torch.Tensor] = {}
        self.last: dict[int, dict[str, torch.Tensor]] = {}

    def train_client(self, task: Task, client: Client, lr: float, r: int) -> torch.Tensor:
        ids = self.unit_ids(task)
        work = self.work[: len(ids)]
        for m, i in zip(work, ids, strict=True):
            m.load_state_dict(self.unit_state[i])
        opt = self.sgd([p for m in work for p in m.parameters()], lr)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            total = torch.zeros((), device=self.device)
            for m in work:  # each unit its own loss and backward; gradients stay per unit
                loss = self.loss(m, x, y)
                loss.backward()
                total += loss.detach()
            return total

        total = self.steps(opt, client, r, step)
        w = float(client.weight)
        with torch.no_grad():
            for m, i in zip(work, ids, strict=True):
                sums = self.sums.setdefault(i, {})
                for k, v in m.state_dict().items():
                    if not v.is_floating_point():
                        self.last.setdefault(i, {})[k] = v.clone()
                    else:
                        if k not in sums:
                            sums[k] = torch.zeros_like(v)
                        sums[k].add_(v, alpha=w)
                if i not in self.wsum:
                    self.wsum[i] = torch.zeros((), device=self.device)
                self.wsum[i].add_(w)
        return total

    def merge(self) -> None:
        with torch.no_grad():
            for i, sums in self.sums.items():
                for k, v in sums.items():
                    self.unit_state[i][k].copy_(v / self.wsum[i])
                for k, v in self.last.get(i, {}).items():
                    self.unit_state[i][k].copy_(v)

    def eval_model(self, width: float, lam: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
        n = int(width / self.atom + 1e-9) if self.splitmix else 1
        mods = self.units[:n]  # base order 0, 1, ... (sort_bases is off)
        if lam is not None:
            for m in mods:
                set_bn_mode(m, lam)
        if n == 1:
            return mods[0]
        return lambda x: torch.stack([m(x) for m in mods]).mean(0)

    def server_state(self) -> dict[str, torch.Tensor]:
        if not self.splitmix:
            return dict(self.unit_state[0])
        return {f"bases.{i}.{k}": v for i, s in enumerate(self.unit_state) for k, v in s.items()}


def prefix_model(model: nn.Module, width: float) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of slimmable ``model`` whose every tensor is only its width-``width`` prefix block
    (slimmable layers slice ``[:ceil(r*C)]``, which works on the smaller tensors alike), with the
    blocks; what a HeteroFL client receives."""
    blocks = prefix_blocks(model, width)
    sub = copy.deepcopy(model)
    for key, block in blocks.items():
        owner, _, name = key.rpartition(".")
        mod = sub.get_submodule(owner)
        part = getattr(mod, name).detach()[block].clone()
        if name in mod._parameters:
            setattr(mod, name, nn.Parameter(part))
        else:
            mod.register_buffer(name, part)
    return sub, blocks


class SlimFloor(Floor):
    """SHeteroFL (and HeteroFL): prefix sub-models, masked weighted averaging."""

    def __init__(self, cfg: RunConfig, fed: Federation, alg: Algorithm) -> None:
        super().__init__(cfg, fed, alg)
        self.server = copy.deepcopy(alg.server).to(self.device).eval()  # type: ignore[attr-defined]
        self.state = self.server.state_dict()
        self.per_width = getattr(alg, "weighting", "per_client") == "per_width"
        budgets = {max(t.widths) for plan in self.plans for t in plan}
        self.subs = {b: prefix_model(self.server, b) for b in budgets}
        for sub, _ in self.subs.values():
            sub.train()

    def begin_round(self) -> None:
        self.num: dict[str, torch.Tensor] = {}
        self.den: dict[str, torch.Tensor] = {}
        self.last: dict[str, tuple[torch.Tensor, Any]] = {}

    def train_client(self, task: Task, client: Client, lr: float, r: int) -> torch.Tensor:
        sub, blocks = self.subs[max(task.widths)]
        sub_state = sub.state_dict()
        with torch.no_grad():
            for k, b in blocks.items():
                sub_state[k].copy_(self.state[k][b])
        opt = self.sgd(list(sub.parameters()), lr)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            total = torch.zeros((), device=self.device)
            for w in task.widths:  # ascending; gradients of every width accumulate
                sub.set_width(w)
                loss = self.loss(sub, x, y)
                loss.backward()
                total += loss.detach()
            return total

        total = self.steps(opt, client, r, step)
        w = float(client.weight) * (len(task.widths) if self.per_width else 1)
        with torch.no_grad():
            for k, b in blocks.items():
                v = sub_state[k]
                if not v.is_floating_point():
                    self.last[k] = (v.clone(), b)
                    continue
                if k not in self.num:
                    self.num[k] = torch.zeros_like(self.state[k])
                    self.den[k] = torch.zeros_like(self.state[k])
                self.num[k][b].add_(v, alpha=w)
                self.den[k][b].add_(w)
        return total

    def merge(self) -> None:
        with torch.no_grad():
            for k, num in self.num.items():
                den = self.den[k]
                covered = den > 0
                self.state[k].copy_(torch.where(covered, num / den.clamp_min(1e-30), self.state[k]))
            for k, (v, b) in self.last.items():
                self.state[k][b].copy_(v)

    def eval_model(self, width: float, lam: float | None) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.server.set_width(width)

    def server_state(self) -> dict[str, torch.Tensor]:
        return dict(self.state)


def make_floor(cfg: RunConfig, fed: Federation) -> Floor:
    """The floor of ``cfg``'s method, starting from the engine's initial state and plans."""
    alg = fresh_algorithm(cfg, fed)
    if cfg.algorithm in ("heterofl", "sheterofl"):
        return SlimFloor(cfg, fed, alg)
    if cfg.algorithm in ("fedavg", "splitmix"):
        return UnitsFloor(cfg, fed, alg)
    raise ValueError(f"no floor for algorithm {cfg.algorithm!r}")


# ---- our engine ---------------------------------------------------------------------------------
def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def engine_rounds(out: Path) -> list[tuple[float, float]]:
    """(train, val) seconds of every round of a finished run in ``out`` (see module docstring)."""
    per_client: dict[int, float] = {}
    for row in _csv(out / "comm.csv"):
        r = int(row["round"])
        per_client[r] = per_client.get(r, 0.0) + float(row["seconds"])
    rounds = []
    for row in _csv(out / "log.csv"):
        r = int(row["round"])
        rounds.append((per_client[r], float(row["seconds"]) - per_client[r]))
    return rounds


@contextmanager
def engine_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Make the engine's own timings (``time.perf_counter`` in ``fl.engine``) read ``clock``."""
    import splitmix.fl.engine as engine

    saved = engine.time
    engine.time = types.SimpleNamespace(perf_counter=clock)  # type: ignore[assignment]
    try:
        yield
    finally:
        engine.time = saved


def engine_run(
    cfg: RunConfig, fed: Federation, clock: Callable[[], float] = time.perf_counter
) -> tuple[list[tuple[float, float]], dict, float]:
    """Run the engine; returns per-round (train, val) seconds, final server state, train loss of
    round 0."""
    from splitmix.fl.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp, engine_clock(clock):
        run_training(cfg, Path(tmp), federation=fed, progress=False)
        rounds = engine_rounds(Path(tmp))
        state = load_checkpoint(Path(tmp) / "checkpoint.pt")["algorithm"]["server"]
        loss0 = float(_csv(Path(tmp) / "log.csv")[0]["train_loss"])
    return rounds, state, loss0


def max_state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the float tensors of two states with the same keys."""
    if set(a) != set(b):
        raise ValueError(f"state keys differ: {sorted(set(a) ^ set(b))[:4]}")
    return max(
        float((a[k].detach().cpu().double() - b[k].detach().cpu().double()).abs().max())
        for k in a
        if a[k].is_floating_point() and a[k].numel()
    )


# ---- data ---------------------------------------------------------------------------------------
def prepare_hint(root: str, mirror: str | None) -> str:
    src = f" --mirror {mirror}" if mirror else " --mirror <mirror>"
    return (
        f"for d in {' '.join(DOMAINS)}; do python -m splitmix data prepare digits --domain $d "
        f"--source raw{src} --offline --root {root}; done"
    )


def missing_domains(root: str) -> list[str]:
    from splitmix.data.store import read_manifest

    return [d for d in DOMAINS if read_manifest("digits", d, 28, root) is None]


def ensure_data(root: str, mirror: str | None, prepare: bool) -> None:
    """Exit with one line naming the command when a domain is not prepared (or prepare it)."""
    missing = missing_domains(root)
    if not missing:
        return
    if not prepare:
        sys.exit(
            f"error: digits/{','.join(missing)} not prepared under {root}; run `"
            f"{prepare_hint(root, mirror)}` (or pass --prepare)"
        )
    from splitmix.data.store import prepare as prepare_domain

    for d in missing:
        prepare_domain("digits", d, root=root, mirror=mirror, source="raw", offline=True)


# ---- the table ----------------------------------------------------------------------------------
@dataclass
class Result:
    row: Row
    cfg: RunConfig
    ours: tuple[float, float]
    floor: tuple[float, float]
    diff: float
    val_acc: float


def mean_rounds(rounds: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean (train, val) seconds over the rounds after the first (warm-up) one."""
    timed = rounds[1:] if len(rounds) > 1 else rounds
    return (
        float(np.mean([t for t, _ in timed])),
        float(np.mean([v for _, v in timed])),
    )


def column_ok(original: float, ours: float, floor: float) -> bool:
    return ours * SPEEDUP <= original or ours <= FLOOR_SLACK * floor


def table(results: Sequence[Result]) -> str:
    head = (
        "| method | orig train | ours train | floor train | speed-up | ours/floor "
        "| orig val | ours val | floor val | speed-up | ours/floor | verdict |"
    )
    lines = [head, "|" + "---|" * 12]
    for res in results:
        cells = [res.row.label]
        misses = []
        for col, name in ((0, "train"), (1, "val")):
            orig, ours, floor = res.row.original[col], res.ours[col], res.floor[col]
            cells += [
                f"{orig:.2f}",
                f"{ours:.2f}",
                f"{floor:.2f}",
                f"{orig / ours:.1f}x",
                f"{ours / floor:.2f}",
            ]
            if not column_ok(orig, ours, floor):
                misses.append(name)
        cells.append("ok" if not misses else f"MISSES ({', '.join(misses)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_row(row: Row, args: argparse.Namespace, fed: Federation | None) -> tuple[Result, Any]:
    cfg = row_config(
        row, root=args.root, rounds=args.rounds, threads=args.threads, device=args.device
    )
    if fed is None:
        from splitmix.data.federation import build_federation

        fed = build_federation(cfg)
        for c in fed.clients:  # once, so that neither side times copies to the device
            for name in ("train_x", "train_y", "val_x", "val_y"):
                setattr(c, name, getattr(c, name).to(cfg.device))
    print(f"# {row.key}: engine ...", file=sys.stderr, flush=True)
    ours_rounds, state, _ = engine_run(cfg, fed, CLOCKS[args.clock])
    print(f"# {row.key}: floor ...", file=sys.stderr, flush=True)
    torch.set_num_threads(cfg.threads)
    floor = make_floor(cfg, fed)
    floor.clock = CLOCKS[args.clock]
    floor_rounds = floor.run(cfg.rounds)
    diff = max_state_diff(state, floor.server_state())
    acc = floor.val_acc[max(floor.widths)]
    return Result(row, cfg, mean_rounds(ours_rounds), mean_rounds(floor_rounds), diff, acc), fed


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.environ.get("SPLITMIX_DATA") or "data", help="data root")
    p.add_argument(
        "--mirror",
        default=os.environ.get("SPLITMIX_DATA_MIRROR"),
        help="offline data mirror (default $SPLITMIX_DATA_MIRROR), for --prepare",
    )
    p.add_argument("--prepare", action="store_true", help="prepare missing domains from --mirror")
    p.add_argument("--only", nargs="+", choices=ROW_KEYS, help="rows to run (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per run; the first is warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the original: 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall seconds (default; on a quiet machine) or process CPU seconds (a busy one)",
    )
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} but no CUDA device is visible here")
        return 0
    if args.rounds < 2:
        p.error("--rounds must be at least 2: the first round is warm-up and not timed")
    ensure_data(args.root, args.mirror, args.prepare)
    rows = [r for r in ROWS if args.only is None or r.key in args.only]
    print(
        f"# torch {torch.__version__}, {args.threads} threads, device {args.device}, "
        f"{args.rounds} rounds (first not timed), {args.clock} clock; load average before: "
        f"{load()}"
    )
    results, fed = [], None
    for row in rows:
        res, fed = bench_row(row, args, fed)
        results.append(res)
    assert fed is not None
    batch = results[0].cfg.batch_size
    steps = [len(batch_spans(int(c.train_y.shape[0]), batch)) for c in fed.clients]
    print(
        f"# digits {'/'.join(fed.domains)}: {len(fed.clients)} clients, budgets "
        f"{'-'.join(f'{b:g}' for b in fed.budgets)}, {steps} steps of batch {batch} each; "
        "seconds per round"
    )
    print(table(results))
    for res in results:
        print(
            f"# {res.row.key}: same steps, max |engine - floor| of the final server state "
            f"{res.diff:.1e}; floor val acc at the widest width {res.val_acc:.4f}"
        )
    print(f"# load average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
