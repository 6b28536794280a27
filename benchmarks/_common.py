"""Pieces the benchmark scripts share: a synthetic Digits-shaped federation, the engine's initial
global state, and the engine's batch stream for one (round, client).

The bare loops of ``bench_overhead.py`` and ``bench_reference.py`` compare themselves with the
engine by doing the SAME steps: they start from the state ``initial_state`` returns and draw their
batches from ``client_batches``, which uses the engine's own named random streams. Scripts import
this module as ``_common`` (a script's folder is first on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from splitmix.config import RunConfig
from splitmix.data.clients import Client, Federation
from splitmix.fl.algorithm import Algorithm
from splitmix.fl.engine import batches, local_steps, make_generator
from splitmix.methods import build_algorithm


def synthetic_digits(
    clients: int, n_train: int, n_val: int, seed: int = 0, extra: int = 1, cycle: int = 3
) -> Federation:
    """Digits-sized clients (3x28x28 uint8, 10 classes) with a class-dependent pattern; client k
    has ``n_train + extra * (k % cycle)`` training images, so sizes (and step counts) differ, as
    in real splits."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (10, 3, 28, 28), generator=g).float()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        x = 0.5 * protos[y] + 60 * torch.rand(n, 3, 28, 28, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    out = []
    for k in range(clients):
        (tx, ty), (vx, vy) = draw(n_train + extra * (k % cycle)), draw(n_val)
        out.append(Client(k, f"synth-{k}", "synth", tx, ty, vx, vy, vx, vy, 1.0, 0.0))
    total = sum(len(c.train_y) for c in out)
    for c in out:
        c.weight = len(c.train_y) / total
    return Federation("digits", "bench", ("synth",), 10, (3, 28, 28), out)


def fresh_algorithm(cfg: RunConfig, fed: Federation) -> Algorithm:
    """The method of ``cfg`` initialised exactly as the engine initialises it (same init stream),
    for a bare loop to copy its starting state and its per-round plans from."""
    alg = build_algorithm(cfg, fed)
    alg.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    return alg


def initial_state(cfg: RunConfig, fed: Federation) -> dict[str, torch.Tensor]:
    """The engine's initial global state (same init stream), for a bare loop to start from."""
    server = fresh_algorithm(cfg, fed).state_dict()["server"]
    return {k: v.clone() for k, v in server.items()}


def client_batches(
    cfg: RunConfig, client: Client, round_idx: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The engine's training batches of ``client`` in round ``round_idx``: the same permutation
    stream, the same number of local steps, uint8 images scaled to [0, 1] (no augmentation)."""
    g = make_generator(cfg.seed, f"batches/{round_idx}/{client.index}", torch.device("cpu"))
    n = int(client.train_y.shape[0])
    steps = local_steps(n, cfg.batch_size, cfg.local_epochs)
    xs, ys = client.train_x, client.train_y
    for idx in batches(n, cfg.batch_size, steps, g):
        idx = idx.to(device, non_blocking=True)
        yield xs.index_select(0, idx).float().div_(255), ys.index_select(0, idx)
