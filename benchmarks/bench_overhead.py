"""Simulation overhead of the federated engine against a bare PyTorch loop (docs/design.md#fast).

Both sides do the SAME work: FedAvg of the DigitModel on the same synthetic in-memory uint8
clients, the same batches (the engine's per-(round, client) permutation streams), a fresh SGD
optimizer per client per round, the same learning-rate schedule, weighted averaging of the whole
state after every round, and one identical validation pass of every client after the last round.
The engine additionally does what the bare loop does not: the Algorithm verbs (download into a
running model, upload copies, masked averaging), byte counting, per-round CSV logs, the final
checkpoint and run record. The final weights of both are compared, to show the steps are the same.

    .venv/bin/python benchmarks/bench_overhead.py            # prints one `overhead: ...` line
    .venv/bin/python benchmarks/bench_overhead.py --width 1 --rounds 2 --repeats 1

The default (DigitModel x1/4, 10 clients of ~111 images, 3 rounds) is a stress case for the
overhead: small models make per-client costs (state copies, averaging) weigh the most. Timings are
the best of ``--repeats`` interleaved runs, each side timed from start to final weights (the
engine including its checkpoint, logs and run record).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import client_batches, initial_state, synthetic_digits

from splitmix.config import RunConfig, run_config_from_dict
from splitmix.data.clients import Federation
from splitmix.fl.engine import local_steps
from splitmix.fl.schedule import lr_at
from splitmix.training import run_training


def bench_config(args: argparse.Namespace) -> RunConfig:
    return run_config_from_dict(
        {
            "dataset": "digits",
            "split": "bench",
            "method": "fedavg",
            "algorithm": "fedavg",
            "method_params": {"width": args.width},
            "arch": "digit",
            "augment": "none",
            "rounds": args.rounds,
            "batch_size": args.batch,
            "test_batch_size": 128,
            "lr": 0.1,
            "lr_schedule": "cos",
            "eval_every": 10**6,  # only the final validation, mirrored by the bare loop
            "checkpoint_every": 10**6,
            "threads": args.threads,
            "split_config": {"kind": "iid"},
        }
    )


def bare_loop(cfg: RunConfig, fed: Federation, init: dict[str, torch.Tensor]):
    """Plain PyTorch FedAvg doing the same steps; returns (seconds, final state, val acc)."""
    from splitmix.models import build_model

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    model = build_model(
        "digit", width=cfg.method_params["width"], norm="batch", num_classes=10, input_size=28
    )
    model.load_state_dict(init)
    server = {k: v.clone() for k, v in init.items()}
    for r in range(cfg.rounds):
        lr = lr_at(cfg, r)
        acc = {k: torch.zeros_like(v) for k, v in server.items()}
        for c in fed.clients:
            model.load_state_dict(server)
            model.train()
            opt = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
            for x, y in client_batches(cfg, c, r, torch.device("cpu")):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    acc[k] += c.weight * v
        total = sum(c.weight for c in fed.clients)
        server = {k: v / total for k, v in acc.items()}
    model.load_state_dict(server)
    model.eval()
    accs = []
    with torch.no_grad():
        for c in fed.clients:
            correct = 0
            for s in range(0, len(c.val_y), cfg.test_batch_size):
                out = model(c.val_x[s : s + cfg.test_batch_size].float().div_(255))
                correct += int((out.argmax(1) == c.val_y[s : s + cfg.test_batch_size]).sum())
            accs.append(correct / len(c.val_y))
    return time.perf_counter() - t0, server, sum(accs) / len(accs)


def engine_run(cfg: RunConfig, fed: Federation):
    """The engine on the same federation; returns (seconds, final server state, val acc)."""
    from splitmix.fl.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_training(cfg, Path(tmp), federation=fed, progress=False)
        seconds = time.perf_counter() - t0
        state = load_checkpoint(Path(tmp) / "checkpoint.pt")["algorithm"]["server"]
        acc = float(load_checkpoint(Path(tmp) / "best.pt")["metric"])
    return seconds, state, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--n-train", type=int, default=111, help="per client (Digits: ~111)")
    p.add_argument("--n-val", type=int, default=111)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25, help="DigitModel width of FedAvg")
    # One thread by default: the simulation's own work is single-threaded Python and copies, and
    # two-thread OpenMP timings swing several-fold when the cores are shared with anything else.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="best of N, runs interleaved")
    args = p.parse_args()

    cfg = bench_config(args)
    fed = synthetic_digits(args.clients, args.n_train, args.n_val)
    init = initial_state(cfg, fed)
    warm = run_config_from_dict({**cfg.to_dict(), "rounds": 1})
    engine_run(warm, fed), bare_loop(warm, fed, init)  # warm-up: allocator, thread pool
    t_engine, t_bare = [], []
    for _ in range(args.repeats):
        te, state_e, acc_e = engine_run(cfg, fed)
        tb, state_b, acc_b = bare_loop(cfg, fed, init)
        t_engine.append(te)
        t_bare.append(tb)
    diff = max(float((state_e[k].float() - state_b[k].float()).abs().max()) for k in state_b)
    steps = cfg.rounds * sum(local_steps(len(c.train_y), cfg.batch_size, 1) for c in fed.clients)
    print(
        f"# {args.clients} clients x {args.rounds} rounds, {steps} SGD steps, DigitModel width "
        f"{args.width:g}, batch {args.batch}, {args.threads} threads; same steps: max |dtheta| = "
        f"{diff:.2e}, val acc engine {acc_e:.4f} bare {acc_b:.4f}"
    )
    # best-of-N: on a shared machine other processes only ever add time, so the minimum is the
    # closest estimate of each side's own cost; the medians show the spread
    print(
        f"# median engine {statistics.median(t_engine):.2f}s bare {statistics.median(t_bare):.2f}s"
    )
    e, b = min(t_engine), min(t_bare)
    print(f"overhead: engine {e:.2f}s vs bare {b:.2f}s = {e / b:.2f}x")


if __name__ == "__main__":
    main()
