"""Sequential vs client-batched local training (``client_batching``, splitmix/fl/batched.py).

FedAvg of the DigitModel at x1/8 and x1 with 6 and 20 synthetic Digits-sized clients of unequal
sizes (so clients drop out of the batch at different steps and last batches are short), momentum
0.9 and weight decay 5e-4, one engine round (``TrainingRun.train_round``: download, local SGD,
upload, merge; no validation) at a time. Both modes run the same rounds interleaved, so load from
other processes hits both alike, and each mode's median seconds per round is reported, wall clock
and this process's CPU time (on a shared machine the wall clock includes waiting for a core; the CPU
time does not). The load average is printed with the results: label the numbers with it.

    .venv/bin/python benchmarks/bench_batched.py                       # CPU (and CUDA if present)
    .venv/bin/python benchmarks/bench_batched.py --widths 0.125 --clients 6 --rounds 2

Prints one line per (device, width, clients):

    cpu x0.125 6 clients: sequential 1.23 s/round, batched 0.45 s/round = 2.73x faster ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import synthetic_digits

from splitmix.config import RunConfig, run_config_from_dict
from splitmix.data.clients import Federation
from splitmix.fl.engine import TrainingRun, make_generator
from splitmix.training import training_run


def bench_config(width: float, batching: bool, args: argparse.Namespace, device: str) -> RunConfig:
    return run_config_from_dict(
        {
            "dataset": "digits",
            "split": "bench",
            "method": "fedavg",
            "algorithm": "fedavg",
            "method_params": {"width": width},
            "arch": "digit",
            "augment": "none",
            "rounds": 10**6,  # never the last round: no validation in train_round
            "eval_every": 10**6,
            "batch_size": args.batch,
            "local_epochs": args.epochs,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "threads": args.threads,
            "device": device,
            "split_config": {"kind": "iid"},
            "client_batching": batching,
        }
    )


def make_run(cfg: RunConfig, fed: Federation, out: Path) -> TrainingRun:
    run = training_run(cfg, out, fed)
    run.algorithm.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    return run


def timed_round(run: TrainingRun, r: int, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of one round."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    run.train_round(r)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - w0, time.process_time() - c0


def compare(width: float, clients: int, device: str, args: argparse.Namespace) -> str:
    dev = torch.device(device)
    fed = synthetic_digits(clients, args.n_train, 32, extra=7, cycle=4)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for batching in (False, True):
            out = Path(tmp) / str(batching)
            out.mkdir()
            runs[batching] = make_run(bench_config(width, batching, args, device), fed, out)
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(args.rounds + 1):  # round 0 warms up (allocator, kernels, dense caches)
            order = (False, True) if r % 2 == 0 else (True, False)
            for batching in order:
                t = timed_round(runs[batching], r, dev)
                if r > 0:
                    times[batching].append(t)
        sa = runs[False].algorithm.server.state_dict()
        sb = runs[True].algorithm.server.state_dict()
        drift = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    seq_w = statistics.median(t[0] for t in times[False])
    bat_w = statistics.median(t[0] for t in times[True])
    seq_c = statistics.median(t[1] for t in times[False])
    bat_c = statistics.median(t[1] for t in times[True])
    return (
        f"{device} x{width:g} {clients} clients: sequential {seq_w:.2f} s/round, batched "
        f"{bat_w:.2f} s/round = {seq_w / bat_w:.2f}x faster (CPU time {seq_c:.2f} vs "
        f"{bat_c:.2f} s = {seq_c / bat_c:.2f}x); server states after {args.rounds + 1} rounds "
        f"differ by {drift:.1e}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=float, nargs="+", default=[0.125, 1.0])
    p.add_argument("--clients", type=int, nargs="+", default=[6, 20])
    p.add_argument("--n-train", type=int, default=100, help="per client, plus 0-21")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda if present")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load = os.getloadavg()
    print(
        f"# torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s); load "
        f"average {load[0]:.1f} at start; batch {args.batch}, {args.epochs} epoch(s), clients of "
        f"{args.n_train}-{args.n_train + 21} images; median of {args.rounds} rounds",
        flush=True,
    )
    for device in devices:
        for width in args.widths:
            for clients in args.clients:
                print(compare(width, clients, device, args), flush=True)
    print(f"# load average {os.getloadavg()[0]:.1f} at the end", file=sys.stdout)


if __name__ == "__main__":
    main()
