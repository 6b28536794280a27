"""The step schedule of local training: named random streams, how a pass over a client's data is
cut into batches, how many steps a round takes and the batch stream of one (round, client).

Shared by the sequential engine (``splitmix.fl.engine``) and client batching
(``splitmix.fl.batched``), which must draw exactly the same batches; neither imports the other for
them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from splitmix.seeding import rng

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def derived_seed(seed: int, name: str) -> int:
    """A 63-bit integer seed for stream ``name`` (for ``torch.manual_seed`` and generators)."""
    return int(rng(seed, name).integers(0, 2**63 - 1))


def make_generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """A torch generator of stream ``name`` living on ``device`` (CUDA ops need a CUDA one)."""
    g = torch.Generator(device=device)
    g.manual_seed(derived_seed(seed, name))
    return g


def batch_spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the batches one pass over ``n`` samples is cut into: full batches, the
    last one short, and a lone leftover sample joined to the batch before it.

    Batch-norm with batch statistics cannot normalise one sample (the original code crashes on
    such a batch) and dropping it would waste data, so ``n = 33, b = 32`` is ONE batch of 33.
    Training (``batches``) and validation cut their batches with this one rule.
    """
    spans = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] == 1:
        spans.pop()
        spans[-1] = (spans[-1][0], n)
    return spans


def local_steps(n_train: int, batch_size: int, local_epochs: int) -> int:
    """Mini-batch steps of one client per round: the batches of one pass times ``epochs``
    (``ceil(n / b) * epochs`` as in the original, docs/paper.md#pitfalls, less one per epoch
    where a lone leftover sample joins the batch before it): exactly what ``batches`` yields."""
    return len(batch_spans(n_train, batch_size)) * local_epochs


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """Yield ``steps`` index batches: a permutation cut by ``batch_spans`` (last batch short, a
    lone leftover sample joined to the batch before it), re-permuted whenever it is exhausted,
    like a shuffling DataLoader re-created when empty. With ``steps = local_steps(...)`` every
    sample is used exactly once per epoch.
    """
    spans = batch_spans(n, batch_size)
    if steps > 0 and not spans:
        raise ValueError(f"cannot draw {steps} batches from {n} samples")
    perm = torch.randperm(n, generator=generator)
    i = 0
    for _ in range(steps):
        if i == len(spans):
            perm = torch.randperm(n, generator=generator)
            i = 0
        start, end = spans[i]
        i += 1
        yield perm[start:end]
