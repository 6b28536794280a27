"""Peak server memory of one aggregation round: the whole round held as a list, then merged
(how the engine aggregated before), against folding each update in as it arrives (streaming).

The server is FedAvg's PreResNet-18 x1 for CIFAR-10 (the largest model of the paper grid); each
of ``--clients`` clients uploads its whole state as synthetic random tensors of the server's
shapes: no training, no data. Each variant runs in a fresh interpreter, so one variant's heap
cannot hide in the other's. Its baseline is the resident memory once the server model is built
(the global state is in it); its peak is the high-water mark of the round, measured from the
baseline (Linux: the peak is reset through /proc/self/clear_refs; elsewhere ru_maxrss, which
then also counts any earlier peak of the start-up). The table gives the peak above the
baseline in units of one update; the round is bounded when streaming stays within 3 updates
(its sums, at most twice the global state, plus the update being folded).

    .venv/bin/python benchmarks/bench_server_memory.py  # 100 clients: the list holds ~4.5 GB
    .venv/bin/python benchmarks/bench_server_memory.py --clients 20  # quicker, smaller list

The training CLI's allocator setting (freed blocks kept on the heap, ``splitmix.allocator``) is
applied as in a training run; ``--default-malloc`` measures without it.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitmix.config import RunConfig
from splitmix.fl.algorithm import FederationInfo, RoundMerge, Task, Update
from splitmix.methods import get_algorithm

MB = 1024 * 1024
VARIANTS = ("list", "stream")
BOUND_UPDATES = 3  # streaming target: sums (<= 2 x state) + the update being folded


# ---- measuring one variant (child process) ----------------------------------------------------
def _status_kb(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in KiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _maxrss_kb() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1024 if sys.platform == "darwin" else 1
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // scale


def build_server(clients: int, width: float):
    """FedAvg of PreResNet-18 at ``width`` for CIFAR-10-shaped inputs, equal client weights."""
    info = FederationInfo(
        num_clients=clients,
        budgets=np.ones(clients),
        weights=np.full(clients, 1.0 / clients),
        num_classes=10,
        input_shape=(3, 32, 32),
        arch="preresnet18",
    )
    cfg = RunConfig(
        dataset="cifar10",
        split="bench",
        method="fedavg",
        algorithm="fedavg",
        method_params={"width": width},
    )
    alg = get_algorithm("fedavg")(cfg, info)
    alg.init_global(torch.Generator().manual_seed(0))
    return alg


def synthetic_update(template: dict[str, torch.Tensor], client: int) -> Update:
    """Random values of the server's shapes and dtypes (integer counters: the client index)."""
    g = torch.Generator().manual_seed(client)
    tensors = {}
    for key, t in template.items():
        if t.is_floating_point():
            tensors[key] = torch.empty(t.shape, dtype=t.dtype).uniform_(-1, 1, generator=g)
        else:
            tensors[key] = torch.full(t.shape, client, dtype=t.dtype)
    return Update(tensors)


def measure(variant: str, clients: int, width: float, tune_malloc: bool) -> dict[str, object]:
    """One round of ``variant`` on a fresh server; memory and time figures as a dict."""
    torch.set_num_threads(1)
    if tune_malloc:
        from splitmix.allocator import keep_freed_memory

        keep_freed_memory()
    alg = build_server(clients, width)
    state = alg.server.state_dict()
    template = {k: v for k, v in state.items() if k not in alg.local_keys}
    round_plan = [
        (Task(client=i, widths=(width,)), float(w)) for i, w in enumerate(alg.info.weights)
    ]
    gc.collect()
    baseline = _status_kb("VmRSS")
    exact = baseline is not None and _reset_peak()
    if not exact:
        baseline = _maxrss_kb()
    t0 = time.perf_counter()
    if variant == "list":
        updates = [(t, synthetic_update(template, t.client), w) for t, w in round_plan]
        alg.aggregate(updates)
        del updates
    else:
        merge = RoundMerge(alg, 0)
        for task, w in round_plan:
            update = synthetic_update(template, task.client)
            merge.add(task, update, w)
            del update  # as the engine does: the server keeps only the running sums
        merge.finish()
    seconds = time.perf_counter() - t0
    peak = (_status_kb("VmHWM") if exact else None) or _maxrss_kb()
    return {
        "variant": variant,
        "state_bytes": sum(v.numel() * v.element_size() for v in state.values()),
        "update_bytes": synthetic_update(template, 0).nbytes(),
        "baseline_kb": baseline,
        "peak_kb": peak,
        "exact_peak": exact,
        "seconds": seconds,
    }


# ---- driver (parent process) ------------------------------------------------------------------
class ChildFailed(RuntimeError):
    """A variant's process failed (e.g. killed for memory with too many --clients)."""


def run_child(variant: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", variant, "--clients", str(args.clients)]
    cmd += ["--width", str(args.width)] + (["--default-malloc"] if args.default_malloc else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ChildFailed(f"the {variant} variant exited {done.returncode}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict[str, object]], clients: int) -> str:
    upd = float(rows[0]["update_bytes"])
    lines = [
        f"one aggregation round, {clients} clients, FedAvg PreResNet-18 (CIFAR-10 shapes): "
        f"global state {float(rows[0]['state_bytes']) / MB:.1f} MB, "
        f"one update {upd / MB:.1f} MB",
        "| variant | baseline RSS MB | peak RSS MB | peak - baseline MB | in updates | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = (float(r["peak_kb"]) - float(r["baseline_kb"])) * 1024
        note = "" if r["exact_peak"] else " (ru_maxrss)"
        lines.append(
            f"| {r['variant']}{note} | {float(r['baseline_kb']) / 1024:.0f} | "
            f"{float(r['peak_kb']) / 1024:.0f} | {extra / MB:.0f} | {extra / upd:.2f} | "
            f"{float(r['seconds']):.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--width", type=float, default=1.0, help="PreResNet-18 width (default x1)")
    ap.add_argument("--default-malloc", action="store_true", help="skip the allocator tuning")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.clients < 1:
        print(f"error: --clients {args.clients} is below 1; pass 1 or more", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(measure(args.child, args.clients, args.width, not args.default_malloc)))
        return 0
    try:
        rows = [run_child(v, args) for v in VARIANTS]
    except ChildFailed as exc:
        hint = "the list variant holds --clients updates; try fewer"
        print(f"error: {exc} ({hint})", file=sys.stderr)
        return 2
    print(table(rows, args.clients))
    stream = rows[VARIANTS.index("stream")]
    extra = (float(stream["peak_kb"]) - float(stream["baseline_kb"])) * 1024
    ok = extra <= BOUND_UPDATES * float(stream["update_bytes"])
    print(
        f"streaming peak above the global state: {extra / float(stream['update_bytes']):.2f} "
        f"updates (bound {BOUND_UPDATES}): {'ok' if ok else 'EXCEEDED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
