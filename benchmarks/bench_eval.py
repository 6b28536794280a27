"""Evaluation speed: the fast inference path against the assembled model, and evaluation against
training of a quick-profile run (issue 5: "evaluating a quick-profile model at four widths with
PGD on digits-mini takes less than the training of that run").

Part ``kernels``: one PGD step's work (forward + input gradient) on a Split-Mix ensemble of k
DigitModel bases at atom 1/8 and batch 125 (a digits-mini client's test set), plain (the assembled
``Ensemble`` in NCHW) against ``models.fast.inference_model`` (channels-last, fused bases).
Interleaved repeats, median per side; prints ``k=4: plain X ms, fast Y ms, speedup Z.ZZx``.

Part ``run``: trains a quick-profile method (``--method``, default ``splitmix``) on digits-mini
(config/config.yaml, seed 1, one thread), then evaluates its four widths (and test lambdas, for
dual BN) with PGD at each ``--steps`` through the evaluate command's own code path; prints the two
wall times and their ratio per attack.

    .venv/bin/python benchmarks/bench_eval.py                   # both parts
    .venv/bin/python benchmarks/bench_eval.py --part kernels --k 1 2 4 8 --norm batch
    .venv/bin/python benchmarks/bench_eval.py --part run --steps 3 7 --method splitmix_dbn
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from splitmix.allocator import keep_freed_memory
from splitmix.config import AdvConfig
from splitmix.models import build_model
from splitmix.splitmix.ensemble import Ensemble
from splitmix.splitmix.inference import ensemble_inference_model as inference_model

REPO = Path(__file__).resolve().parents[1]


def pgd_step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    xa = x.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
    return (time.perf_counter() - start) * 1000


def kernels(ks: list[int], norm: str, batch: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)
    for k in ks:
        torch.manual_seed(k)
        bases = nn.ModuleList(build_model("digit", width=0.125, norm=norm) for _ in range(k))
        plain = Ensemble(bases, atom=0.125).eval()
        fast = inference_model(plain)
        for m in (plain, fast):
            for p in m.parameters():
                p.requires_grad_(False)
            pgd_step_ms(m, x, y)  # warm-up
        times: dict[str, list[float]] = {"plain": [], "fast": []}
        for _ in range(repeats):
            times["plain"].append(pgd_step_ms(plain, x, y))
            times["fast"].append(pgd_step_ms(fast, x, y))
        a, b = (statistics.median(times[s]) for s in ("plain", "fast"))
        print(f"k={k}: plain {a:.1f} ms, fast {b:.1f} ms, speedup {a / b:.2f}x "
              f"(batch {batch}, bn {norm}, {type(fast).__name__})")  # fmt: skip


def run(method: str, steps: list[int], workdir: Path) -> None:
    from splitmix.evaluate.run import EvalOptions, evaluate_run
    from splitmix.experiment import load_experiment, resolve_run
    from splitmix.training import run_training

    exp = load_experiment(REPO / "config" / "config.yaml")
    cfg = resolve_run(exp, "digits-mini", "feature", method, 1)
    run_dir = workdir / method
    start = time.perf_counter()
    run_training(cfg, run_dir, progress=False)
    train_s = time.perf_counter() - start
    print(f"train: quick digits-mini {method} seed 1, {cfg.rounds} rounds: {train_s:.1f} s")
    for n in steps:
        options = EvalOptions(threads=cfg.threads, pgd=AdvConfig(steps=n))
        start = time.perf_counter()
        df = evaluate_run(run_dir, options, out=workdir / f"eval{n}.csv")
        eval_s = time.perf_counter() - start
        robust = df[df["metric"] == "robust_acc"]
        widths = ", ".join(f"{w:g}" for w in sorted(set(robust["width"])))
        lams = sorted(set(robust["lam"].dropna()))
        at = f"widths {widths}" + (
            f" x lambdas {', '.join(f'{x:g}' for x in lams)}" if lams else ""
        )
        print(f"evaluate: PGD-{n} at {at}: "
              f"{eval_s:.1f} s = {eval_s / train_s:.2f}x training")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["kernels", "run", "both"], default="both")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--norm", choices=["batch", "tracked"], default="batch")
    p.add_argument("--batch", type=int, default=125)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--steps", type=int, nargs="+", default=[3, 7])
    p.add_argument("--method", default="splitmix", help="a digits-mini method of the quick config")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the evaluate command does
    if args.part in ("kernels", "both"):
        kernels(args.k, args.norm, args.batch, args.repeats)
    if args.part in ("run", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run(args.method, args.steps, Path(tmp))


if __name__ == "__main__":
    main()
