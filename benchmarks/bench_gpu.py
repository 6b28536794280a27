"""The speed checks of docs/speed.md on a CUDA device, one after another; skipped without one.

Run it as one prepared command on a GPU machine (it needs no network; the reference table needs
the three prepared Digits domains, see docs/speed.md#run):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_gpu.py --root /tmp/digits

1. ``bench_reference.py --device cuda``: the reference table, engine and floor on the GPU;
2. ``bench_batched.py --devices cuda``: client-batched against sequential training;
3. ``python -m splitmix estimate --device cuda --steps 2``: the paper grid's GPU-hours.

The server-memory benchmark is left out: aggregation runs on the CPU state either way. Each step
prints its own output; a failing step is reported and the next one still runs, so one short
session on a lent machine gives every figure it can.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def steps(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    py = sys.executable
    bench = REPO / "benchmarks"
    return [
        (
            "reference table",
            [py, str(bench / "bench_reference.py"), "--device", "cuda", "--root", args.root,
             "--rounds", str(args.rounds)],
        ),
        ("client batching", [py, str(bench / "bench_batched.py"), "--devices", "cuda"]),
        (
            "paper grid estimate",
            [py, "-m", "splitmix", "estimate", "--configfile", "config/paper.yaml", "--device",
             "cuda", "--steps", "2", "--rounds", "1", "--gpus", "1"],
        ),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data", help="data root with the prepared Digits domains")
    p.add_argument("--rounds", type=int, default=4, help="reference rounds (the first warms up)")
    p.add_argument("--only", nargs="+", type=int, help="step numbers to run (default: all)")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device visible (torch.cuda.is_available() is False)")
        return 0
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    failed = []
    for i, (name, cmd) in enumerate(steps(args), 1):
        if args.only and i not in args.only:
            continue
        print(f"\n## {i}. {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        print(f"# {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
