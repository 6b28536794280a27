"""Client-batched local training: the clients of a round that train modules of one shape run as
one ``torch.func.vmap`` computation over their stacked tensors (docs/methods.md#client-batching).

The sequential loop of ``engine.TrainingRun.train_client`` stays the reference. This is the same
mathematics, reordered: for each client the same batches (its own ``batches/{r}/{client}``
generator), the same augmentation draws (its own ``augment/{r}/{client}`` generator), the same
forward and loss, and the same SGD update (fresh momentum, weight decay, the round's lr). Only
float summation order differs (a vmapped convolution runs as one grouped convolution), so a
client's update matches the sequential one to about 1e-6, not bit for bit.

Which tasks qualify is the method's word, never a guess: ``Algorithm.batchable(task)`` says that
its ``train_step`` is exactly ``loss_fn(model(x), y).backward()`` on the module ``download``
returned. Tasks are grouped by the module object ``download`` returns (kept alive while grouping,
so an id is never reused) and its tensors' names, shapes, dtypes and trainable flags: the same
object guarantees the same non-tensor settings too (a scaler's rate, a width), which equal
shapes alone would not.

Ragged rounds are handled exactly, without padding: at local step ``t`` the clients that still
have steps are split by the size of their step-``t`` batch (a pass ends in a short batch), and
each such sub-group is one vmapped call. Padding with a mask would change batch-norm's batch
statistics; sub-groups keep every batch exactly the sequential one. A client whose steps run out
drops out of every later sub-group.

BN running statistics (``bn: tracked`` / ``local``) are part of each client's stacked buffers and
are updated in place inside the vmapped forward, exactly as the sequential module updates its own.

Global RNG: the sequential engine seeds torch's global generator per (round, client) before
``download``; the batched path does the same before each of its downloads. A plain step draws
nothing from it during training: the vmapped step runs with ``randomness="error"`` (any draw
raises), and the global state is compared before and after a group's training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from splitmix.config import RunConfig
from splitmix.data.clients import Client
from splitmix.fl.algorithm import Algorithm, LossFn, Task
from splitmix.fl.steps import (
    Augment,
    batch_spans,
    batches,
    derived_seed,
    local_steps,
    make_generator,
)

#: Bytes of stacked state (parameters, momentum and gradients of every member) one vmapped group
#: may hold; a larger group is cut into chunks of similar clients. Bounds the memory of 20-50
#: full-width clients on a CPU; a GPU's batch would rarely need more.
GROUP_BYTES = 4 * 2**30
MIN_GROUP = 2  # a group of one is the sequential loop with extra copies


@dataclass
class _Member:
    """One batched task: where it sits in the round, its data and its step schedule."""

    index: int  # position in the round's task list
    task: Task
    client: Client
    steps: int
    sizes: list[int]  # batch sizes of one pass (a pass ends in a short batch)
    state: dict[str, torch.Tensor] | None = None  # snapshot after download, until stacked
    seconds: float = 0.0
    loss_sum: float = 0.0


@dataclass
class _Group:
    """Tasks whose downloads are one module object with one tensor layout."""

    module: nn.Module
    trainable: list[str]  # parameter names SGD updates (those download left requires_grad)
    fixed: list[str]  # frozen parameters and buffers: passed to the forward, not differentiated
    members: list[_Member] = field(default_factory=list)
    stacked: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (K, ...)
    written: set[int] = field(default_factory=set)

    def slot(self, index: int) -> int:
        return next(s for s, m in enumerate(self.members) if m.index == index)


def _tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return chain(module.named_parameters(), module.named_buffers())


def _signature(module: nn.Module) -> tuple:
    """What must be equal for two downloads to share one vmapped computation."""
    params = tuple(
        (n, tuple(p.shape), p.dtype, p.device, p.requires_grad)
        for n, p in module.named_parameters()
    )
    bufs = tuple((n, tuple(b.shape), b.dtype, b.device) for n, b in module.named_buffers())
    return (id(module), type(module), module.training, params, bufs)


def _state_bytes(state: dict[str, torch.Tensor], trainable: Sequence[str]) -> int:
    """Stacked bytes one member costs during training: its tensors, plus a momentum buffer and a
    gradient for each trainable one."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    return total + 2 * sum(state[n].numel() * state[n].element_size() for n in trainable)


def _chunks(members: list[_Member], per_member: int) -> list[list[_Member]]:
    """``members`` cut into near-equal chunks of at most ``GROUP_BYTES``. Members are sorted by
    their step count first, so a chunk holds clients that drop out at about the same step."""
    ordered = sorted(members, key=lambda m: (-m.steps, -m.sizes[-1], m.index))
    cap = max(MIN_GROUP, GROUP_BYTES // max(per_member, 1))
    n_chunks = -(-len(ordered) // cap)
    size = -(-len(ordered) // n_chunks)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _select(t: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    """Rows of a stacked tensor: a view for a contiguous range, a copy for an index set."""
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


def _rows(slots: list[int], device: torch.device) -> slice | torch.Tensor:
    """The stacked rows of ``slots`` (ascending): a slice when contiguous, so updates write
    through views without a gather and a scatter."""
    if slots[-1] - slots[0] + 1 == len(slots):
        return slice(slots[0], slots[-1] + 1)
    return torch.tensor(slots, device=device)


class BatchedTraining:
    """One round's batched local training (see module docstring).

    Construction downloads each batchable task once (seeding torch as the engine does), forms
    groups of at least ``MIN_GROUP`` and trains them; ``index in self`` says whether task
    ``index`` (a position in the round's task list) is batched. The engine then, task by task in
    round order, downloads again and calls ``write(index, model)``, which writes the task's
    trained tensors into ``model`` and returns ``(sum of step losses, steps)`` as
    ``train_client`` does; the engine uploads ``model`` as usual, so the merge sees the uploads
    in the sequential order. A group's stacked tensors are freed once every member is written.
    Training eagerly (rather than when the loop reaches a group) adds to peak memory only one
    group's momentum and gradients: the snapshots the groups are formed from already hold every
    batched client's state, the same size as the trained states kept for ``write``.
    """

    def __init__(
        self,
        algorithm: Algorithm,
        tasks: Sequence[Task],
        clients: Sequence[Client],
        *,
        cfg: RunConfig,
        lr: float,
        round_idx: int,
        loss_fn: LossFn,
        augment: Augment | None,
        device: torch.device,
    ) -> None:
        self.cfg, self.lr, self.r = cfg, lr, round_idx
        self.loss_fn, self.augment, self.device = loss_fn, augment, device
        self.groups: dict[int, _Group] = {}  # task index -> its group
        for group in self._plan(algorithm, tasks, clients):
            self._train(group)
            for m in group.members:
                self.groups[m.index] = group

    def __contains__(self, index: int) -> bool:
        return index in self.groups

    def seconds(self, index: int) -> float:
        """Time spent on task ``index`` before the engine's loop reached it: its snapshot download
        and its share (1/K) of its group's training. Zero for a task that is not batched."""
        group = self.groups.get(index)
        return 0.0 if group is None else group.members[group.slot(index)].seconds

    # ---- grouping ------------------------------------------------------------------------------
    def _plan(
        self, algorithm: Algorithm, tasks: Sequence[Task], clients: Sequence[Client]
    ) -> list[_Group]:
        cfg = self.cfg
        by_sig: dict[tuple, _Group] = {}
        for i, task in enumerate(tasks):
            if not algorithm.batchable(task):
                continue
            t0 = time.perf_counter()
            client = clients[task.client]
            n = int(client.train_y.shape[0])
            steps = local_steps(n, cfg.batch_size, cfg.local_epochs)
            torch.manual_seed(derived_seed(cfg.seed, f"torch/{self.r}/{task.client}"))
            module = algorithm.download(task)
            if steps == 0 or not any(p.requires_grad for p in module.parameters()):
                continue  # nothing to train: the sequential path returns at once
            sig = _signature(module)
            group = by_sig.get(sig)
            if group is None:
                trainable = [n for n, p in module.named_parameters() if p.requires_grad]
                names = [n for n, _ in _tensors(module)]
                fixed = [n for n in names if n not in set(trainable)]
                group = by_sig[sig] = _Group(module, trainable, fixed)
            sizes = [e - s for s, e in batch_spans(n, cfg.batch_size)]
            state = {n: t.detach().clone() for n, t in _tensors(module)}
            member = _Member(i, task, client, steps, sizes, state)
            member.seconds = time.perf_counter() - t0
            group.members.append(member)
        out: list[_Group] = []
        for group in by_sig.values():
            if len(group.members) < MIN_GROUP:
                continue  # left to the sequential loop
            per_member = _state_bytes(group.members[0].state or {}, group.trainable)
            for chunk in _chunks(group.members, per_member):
                if len(chunk) < MIN_GROUP:
                    continue
                part = _Group(group.module, group.trainable, group.fixed, chunk)
                _stack(part)
                out.append(part)
        return out

    # ---- training ------------------------------------------------------------------------------
    def write(self, index: int, model: nn.Module) -> tuple[float, int]:
        """Write task ``index``'s trained tensors into ``model`` (its fresh download); returns
        ``(sum of step losses, steps)``."""
        group = self.groups[index]
        slot = group.slot(index)
        member = group.members[slot]
        own = dict(_tensors(model))
        if set(own) != set(group.stacked):
            raise RuntimeError(
                f"task {index}: the module download returned now has tensors "
                f"{sorted(set(own) ^ set(group.stacked))[:3]} the batched one had not"
            )
        with torch.no_grad():
            for name, t in own.items():
                t.copy_(group.stacked[name][slot])
        group.written.add(index)
        if len(group.written) == len(group.members):
            group.stacked = {}  # every member written: free the group's state
        return member.loss_sum, member.steps

    def _train(self, group: _Group) -> None:
        t0 = time.perf_counter()
        rng_before = _global_rng_state(self.device)
        losses = _train_group(group, self)
        if not torch.equal(rng_before, _global_rng_state(self.device)):
            raise RuntimeError(
                "a step declared plain (Algorithm.batchable) drew from torch's global RNG; "
                "its method must not declare batchable steps"
            )
        share = (time.perf_counter() - t0) / len(group.members)
        for member, values in zip(group.members, losses, strict=True):
            member.loss_sum = sum(values)  # in step order, as train_client sums float(loss)
            member.seconds += share


def _global_rng_state(device: torch.device) -> torch.Tensor:
    state = torch.random.get_rng_state()
    if device.type == "cuda":
        state = torch.cat([state, torch.cuda.get_rng_state(device).to(state.dtype)])
    return state


def _stack(group: _Group) -> None:
    """Stack the members' snapshots into ``group.stacked`` (name -> (K, ...)), dropping each
    snapshot tensor once stacked so memory peaks at one copy plus one tensor."""
    for name in group.trainable + group.fixed:
        parts = []
        for m in group.members:
            assert m.state is not None
            parts.append(m.state.pop(name))
        group.stacked[name] = torch.stack(parts)
    for m in group.members:
        m.state = None


def _step_fn(group: _Group, loss_fn: LossFn) -> Callable:
    """One vmapped step: per client, gradients of its loss w.r.t. its trainable tensors, and
    the loss. Frozen tensors and buffers are inputs; BN running stats update in place."""
    module = group.module

    def loss(params: dict, fixed: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(module, (params, fixed), (x,)), y)

    return vmap(grad_and_value(loss), randomness="error")


def _train_group(group: _Group, run: BatchedTraining) -> list[list[float]]:
    """Local SGD of every member of ``group`` on the stacked tensors; returns each member's step
    losses in step order."""
    cfg, dev, lr = run.cfg, run.device, run.lr
    momentum, wd = cfg.momentum, cfg.weight_decay
    members, stacked = group.members, group.stacked
    if not group.module.training:
        raise RuntimeError("batched training needs the module download returns in train mode")
    step = _step_fn(group, run.loss_fn)
    # a fresh SGD per client: zero momentum makes the first step buf = d_p exactly, as
    # torch.optim.SGD's clone of the first d_p
    bufs = {n: torch.zeros_like(stacked[n]) for n in group.trainable} if momentum else {}
    draws = [_client_batches(m, run) for m in members]
    # float64 holds every loss dtype exactly, as train_client's float(loss) does
    losses = torch.zeros(
        len(members), max(m.steps for m in members), dtype=torch.float64, device=dev
    )
    for t in range(max(m.steps for m in members)):
        by_size: dict[int, list[int]] = {}
        for s, m in enumerate(members):
            if t < m.steps:
                by_size.setdefault(m.sizes[t % len(m.sizes)], []).append(s)
        for slots in by_size.values():
            rows = _rows(slots, dev)
            batch = [next(draws[s]) for s in slots]
            x = torch.stack([b[0] for b in batch])
            y = torch.stack([b[1] for b in batch])
            params = {n: _select(stacked[n], rows) for n in group.trainable}
            fixed = {n: _select(stacked[n], rows) for n in group.fixed}
            grads, loss = step(params, fixed, x, y)
            with torch.no_grad():
                for n in group.trainable:
                    buf = _select(bufs[n], rows) if momentum else None
                    _sgd(params[n], grads[n], buf, lr, momentum, wd)
                    if isinstance(rows, torch.Tensor):  # a gathered copy: scatter it back
                        stacked[n].index_copy_(0, rows, params[n])
                        if buf is not None:
                            bufs[n].index_copy_(0, rows, buf)
                if isinstance(rows, torch.Tensor):
                    for n in group.fixed:  # BN running statistics updated in the forward
                        stacked[n].index_copy_(0, rows, fixed[n])
                losses[_slots_tensor(slots, dev), t] = loss.detach().to(torch.float64)
    return [row[: m.steps] for row, m in zip(losses.tolist(), members, strict=True)]


def _slots_tensor(slots: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(slots, device=device)


def _sgd(
    p: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor | None,
    lr: float,
    momentum: float,
    wd: float,
) -> None:
    """``torch.optim.SGD``'s update (dampening 0, no Nesterov), op for op, in place on ``p``.
    ``grad`` is a fresh tensor of the step, so weight decay goes into it in place (the same
    values as SGD's out-of-place ``d_p.add(p, alpha=wd)``, one allocation of ``p``'s size less)."""
    d_p = grad.add_(p, alpha=wd) if wd != 0 else grad
    if buf is not None:
        buf.mul_(momentum).add_(d_p)
        d_p = buf
    p.add_(d_p, alpha=-lr)


def _client_batches(member: _Member, run: BatchedTraining) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(x, y)`` of each of the member's steps, drawn exactly as ``engine.train_client`` draws
    them: the same generator streams (names must match train_client's), the same order."""
    cfg, dev, r, k = run.cfg, run.device, run.r, member.task.client
    g_batch = make_generator(cfg.seed, f"batches/{r}/{k}", torch.device("cpu"))
    g_aug = make_generator(cfg.seed, f"augment/{r}/{k}", dev)
    xs, ys = member.client.train_x, member.client.train_y
    for idx in batches(int(ys.shape[0]), cfg.batch_size, member.steps, g_batch):
        idx = idx.to(dev, non_blocking=True)
        x = xs.index_select(0, idx).float().div_(255)
        y = ys.index_select(0, idx)
        if run.augment is not None:
            x = run.augment(x, g_aug)
        yield x, y
