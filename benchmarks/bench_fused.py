"""Fused vs sequential local training of a client's Split-Mix bases (``method_params.fused``).

One local step = zero_grad, ``SplitMix.train_step`` over the client's k bases, one SGD step
(momentum 0.9, weight decay 5e-4), exactly as the engine runs it, for k = 2, 4, 8 DigitModel
bases at atom 1/8 (budgets 1/4, 1/2, 1). Sequential and fused steps are timed in interleaved
repeats and the median per-step time of each is reported, so that load from other processes on a
shared machine hits both alike. Prints one line per (k, batch size):

    fused k=4: sequential X ms/step, fused Y ms/step, speedup Z.ZZx (batch 32)

Usage: ``python benchmarks/bench_fused.py [--batch 32 128] [--k 2 4 8] [--threads 2]
[--clock wall|cpu] [--bn batch|tracked]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from splitmix.config import run_config_from_dict
from splitmix.fl.algorithm import FederationInfo, Task
from splitmix.splitmix import SplitMix

ATOM = 0.125


def make_algorithm(fused: bool, bn: str, threads: int) -> SplitMix:
    cfg = run_config_from_dict(
        {
            "dataset": "digits",
            "split": "bench",
            "method": "splitmix",
            "algorithm": "splitmix",
            "arch": "digit",
            "bn": bn,
            "budgets": "8-4-2-1",
            "threads": threads,
            "method_params": {"atom": ATOM, "fused": fused},
        }
    )
    info = FederationInfo(
        num_clients=4,
        budgets=np.array([0.125, 0.25, 0.5, 1.0]),
        weights=np.full(4, 0.25),
        num_classes=10,
        input_shape=(3, 28, 28),
        arch="digit",
    )
    alg = SplitMix(cfg, info)
    alg.init_global(torch.Generator().manual_seed(0))
    return alg


class Trainer:
    """A downloaded client task with its optimizer, ready to take timed steps."""

    def __init__(self, alg: SplitMix, k: int, batch: int) -> None:
        self.alg = alg
        self.task = Task(client=0, bases=tuple(range(k)))
        self.model = alg.download(self.task)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(batch, 3, 28, 28, generator=g)
        self.y = torch.randint(0, 10, (batch,), generator=g)

    def steps(self, n: int, clock: Callable[[], float] = time.perf_counter) -> float:
        """Run ``n`` local steps; return seconds per step on ``clock``."""
        t0 = clock()
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            self.alg.train_step(self.model, self.task, self.x, self.y, F.cross_entropy)
            self.opt.step()
        return (clock() - t0) / n


def bench(
    k: int, batch: int, steps: int, repeats: int, bn: str, threads: int, clock: Callable[[], float]
) -> tuple[float, float]:
    seq = Trainer(make_algorithm(False, bn, threads), k, batch)
    fus = Trainer(make_algorithm(True, bn, threads), k, batch)
    seq.steps(3)  # warm-up: allocator, oneDNN kernel selection
    fus.steps(3)
    t_seq, t_fus = [], []
    for _ in range(repeats):
        t_seq.append(seq.steps(steps, clock))
        t_fus.append(fus.steps(steps, clock))
    return statistics.median(t_seq) * 1e3, statistics.median(t_fus) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bn", default="batch", choices=("batch", "tracked"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu = this process's CPU time: steadier on a shared machine, but with "
        "--threads > 1 it sums the threads' time (no credit for parallelism)",
    )
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    for batch in args.batch:
        for k in args.k:
            s, f = bench(k, batch, args.steps, args.repeats, args.bn, args.threads, clock)
            print(
                f"fused k={k}: sequential {s:.2f} ms/step, fused {f:.2f} ms/step, "
                f"speedup {s / f:.2f}x (batch {batch})",
                flush=True,
            )


if __name__ == "__main__":
    main()
