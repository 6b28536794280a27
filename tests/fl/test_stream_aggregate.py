"""Streaming aggregation: every method folds uploads one at a time into running sums, and the
result equals the list-based merge it replaced, bit for bit; methods that only know
``aggregate(list)`` keep working; the engine holds one update at a time."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from splitmix.config import RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import (
    Algorithm,
    FederationInfo,
    RoundMerge,
    Task,
    Update,
    register,
    streams,
)
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.methods import get_algorithm
from splitmix.training import run_training

from .toy import ToyLinear, toy_config, toy_federation

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 28, 28)
Triple = tuple[Task, Update, float]


# ---- the list-based merge this change replaced, kept verbatim as the reference ----------------
class _ListMaskedAverage:
    """The pre-streaming ``MaskedAverage``: buffers grown (by copying) to the largest block seen,
    merged once the whole round's list was added."""

    def __init__(self) -> None:
        self.num: dict[str, torch.Tensor] = {}
        self.den: dict[str, torch.Tensor] = {}
        self.last: dict[str, tuple[torch.Tensor, tuple[slice, ...] | None]] = {}

    def add(self, key: str, value: torch.Tensor, w: float, block) -> None:
        if not value.is_floating_point():
            self.last[key] = (value, block)
            return
        if block is None:
            block = tuple(slice(0, s) for s in value.shape)
        full = tuple(block) + tuple(slice(None) for _ in range(value.dim() - len(block)))
        concrete = tuple(
            slice(0 if sl.start is None else sl.start, (sl.start or 0) + n)
            for sl, n in zip(full, value.shape, strict=True)
        )
        extent = tuple(sl.stop for sl in concrete)
        if key not in self.num:
            self.num[key] = torch.zeros(extent)
            self.den[key] = torch.zeros(extent)
        elif any(a < b for a, b in zip(self.num[key].shape, extent, strict=True)):
            new = tuple(max(a, b) for a, b in zip(self.num[key].shape, extent, strict=True))
            old = tuple(slice(0, s) for s in self.num[key].shape)
            for buf in (self.num, self.den):
                bigger = torch.zeros(new)
                bigger[old] = buf[key]
                buf[key] = bigger
        self.num[key][concrete].add_(value.float(), alpha=w)
        self.den[key][concrete].add_(w)

    def merge_into(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, num in self.num.items():
                den = self.den[key]
                region = state[key][tuple(slice(0, s) for s in num.shape)]
                covered = den > 0
                mean = num / torch.where(covered, den, torch.ones_like(den))
                region.copy_(torch.where(covered, mean.to(region.dtype), region))
            for key, (value, block) in self.last.items():
                (state[key] if block is None else state[key][block]).copy_(value)


def list_reference(alg: Algorithm, updates: list[Triple]) -> None:
    """The old list-based aggregation of ``alg``: HeteroFL's family re-weighted the list by
    ``contribution_weight`` before the masked average; every other method used it as is."""
    ref = _ListMaskedAverage()
    for task, update, weight in updates:
        w = alg.contribution_weight(task, weight) if hasattr(alg, "contribution_weight") else weight
        for key, value in update.tensors.items():
            ref.add(key, value, float(w), update.blocks.get(key))
    ref.merge_into(alg.server.state_dict())


# ---- methods and synthetic rounds -------------------------------------------------------------
CASES = {
    "fedavg": ("fedavg", "batch", {"width": 0.5}),
    "fedavg-tracked": ("fedavg", "tracked", {"width": 0.25}),  # integer BN counters
    "heterofl": ("heterofl", "batch", {}),
    "sheterofl-per-width": ("sheterofl", "tracked", {}),
    "sheterofl-per-client": ("sheterofl", "batch", {"weighting": "per_client"}),
    "splitmix": ("splitmix", "batch", {}),
    "splitmix-local-bn": ("splitmix", "local", {}),
}
WEIGHTS = np.array([0.1, 0.2, 0.3, 0.4])


def make(algorithm: str, bn: str, params: dict, cls: type[Algorithm] | None = None) -> Algorithm:
    k = len(WEIGHTS)
    info = FederationInfo(
        num_clients=k,
        budgets=assign_budgets("8-4-2-1", k),
        weights=WEIGHTS,
        num_classes=10,
        input_shape=SHAPE,
        arch="digit",
    )
    cfg = RunConfig(
        dataset="digits",
        split="s",
        method=algorithm,
        algorithm=algorithm,
        bn=bn,
        budgets="8-4-2-1",
        method_params=dict(params),
    )
    alg = (cls or get_algorithm(algorithm))(cfg, info)
    alg.init_global(torch.Generator().manual_seed(3))
    return alg


def synthetic_round(alg: Algorithm, clients: list[int], seed: int = 0) -> list[Triple]:
    """Each client's real upload (its keys and blocks) with its values moved by random noise,
    integer counters set per client: distinct uploads without training."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for task in alg.plan(0, clients, np.random.default_rng(seed)):
        update = alg.upload(task, alg.download(task))
        for value in update.tensors.values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=g))
            else:
                value.fill_(10 + task.client)
        out.append((task, update, float(alg.info.weights[task.client])))
    return out


def state_of(alg: Algorithm) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in alg.server.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_streaming_equals_the_list_based_merge_bit_for_bit(case: str) -> None:
    algorithm, bn, params = CASES[case]
    ref, stream, listed = (make(algorithm, bn, params) for _ in range(3))
    # clients 3, 0, 2 (an unsorted subset; client 1 does not take part), then a second round
    for r, clients in enumerate(([3, 0, 2], [1, 3])):
        before = state_of(ref)
        updates = synthetic_round(ref, clients, seed=r)
        list_reference(ref, updates)
        merge = RoundMerge(stream, r)
        for triple in updates:
            merge.add(*triple)
        merge.finish()
        listed.aggregate(updates)
        after = state_of(ref)
        for key, value in after.items():
            assert torch.equal(stream.server.state_dict()[key], value), (case, r, key)
            assert torch.equal(listed.server.state_dict()[key], value), (case, r, key)
        changed = [k for k in after if not torch.equal(after[k], before[k])]
        assert changed, "the round moved nothing: the comparison would prove nothing"


def test_splitmix_leaves_untrained_bases_and_local_bn_as_they_were() -> None:
    alg = make("splitmix", "local", {})
    before = state_of(alg)
    updates = synthetic_round(alg, [0, 1])  # budgets 1/8 and 1/4: three of the eight bases
    trained = {t.bases for t, _, _ in updates}
    merge = RoundMerge(alg, 0)
    for triple in updates:
        merge.add(*triple)
    merge.finish()
    after = alg.server.state_dict()
    for key, value in after.items():
        uploaded = any(key in u.tensors for _, u, _ in updates)
        assert torch.equal(value, before[key]) != uploaded, (key, trained)
    assert all(k not in u.tensors for _, u, _ in updates for k in alg.local_keys)


# ---- methods that only know aggregate(list) ---------------------------------------------------
class _ListSHeteroFL(get_algorithm("sheterofl")):  # type: ignore[misc]
    """A third-party method written before streaming: overrides only ``aggregate``."""

    def aggregate(self, updates: list[Triple]) -> None:
        self.calls = [*getattr(self, "calls", []), list(updates)]
        super().aggregate(updates)


def test_which_methods_stream() -> None:
    for name in ("fedavg", "heterofl", "sheterofl", "splitmix"):
        assert streams(get_algorithm(name)), name
    assert not streams(ToyLinear)  # overrides aggregate only
    assert not streams(_ListSHeteroFL)  # aggregate overridden below a streaming base


def test_a_list_method_under_a_streaming_base_gets_its_aggregate_called_once() -> None:
    """The engine buffers the round for it and calls its ``aggregate`` once, in upload order;
    the per-width weighting of its base still applies (same numbers as the streaming method)."""
    listed = make("sheterofl", "batch", {}, cls=_ListSHeteroFL)
    plain = make("sheterofl", "batch", {})
    updates = synthetic_round(listed, [2, 0, 3])
    for alg in (listed, plain):
        merge = RoundMerge(alg, 5)
        for triple in updates:
            merge.add(*triple)
        merge.finish()
    assert len(listed.calls) == 1
    assert [id(x) for x in listed.calls[0][0]] == [id(x) for x in updates[0]]
    assert [t.client for t, _, _ in listed.calls[0]] == [2, 0, 3]
    for key, value in plain.server.state_dict().items():
        assert torch.equal(listed.server.state_dict()[key], value), key


class _Neither(ToyLinear):
    aggregate = Algorithm.aggregate  # overrides neither form: the defaults would loop


def test_a_method_with_no_merge_is_refused_at_construction() -> None:
    fed = toy_federation()
    info = FederationInfo(4, fed.budgets, fed.weights, 4, (3, 4, 4), "toy")
    with pytest.raises(TypeError, match="must override aggregate.*accumulate"):
        _Neither(toy_config(), info)


def test_default_verbs_buffer_for_a_list_method_and_refuse_misuse() -> None:
    fed = toy_federation()
    info = FederationInfo(4, fed.budgets, fed.weights, 4, (3, 4, 4), "toy")
    toy = ToyLinear(toy_config(), info)
    toy.init_global(torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="before begin_aggregate"):
        toy.accumulate(Task(0), Update({}), 1.0)
    ups = [Update({"weight": torch.full_like(toy.weight, v), "bias": toy.bias + v}) for v in (1, 4)]
    toy.begin_aggregate(0)
    toy.accumulate(Task(0), ups[0], 1.0)
    toy.accumulate(Task(1), ups[1], 3.0)
    toy.end_aggregate()  # ToyLinear.aggregate: (1 * 1 + 3 * 4) / 4
    assert torch.allclose(toy.weight, torch.full_like(toy.weight, 3.25))
    assert toy.aggregated_rounds == 1
    with pytest.raises(RuntimeError, match="before begin_aggregate"):
        toy.end_aggregate()  # the round is closed


# ---- MaskedAverage's buffers ------------------------------------------------------------------
def test_sums_are_allocated_once_at_the_server_shape() -> None:
    state = {"w": torch.zeros(6, 4), "c": torch.tensor(0)}
    avg = MaskedAverage(state)
    avg.add("w", torch.ones(2, 2), 1.0, (slice(0, 2), slice(0, 2)))
    num = avg._num["w"]
    assert num.shape == (6, 4)
    ptr = num.data_ptr()
    avg.add("w", torch.full((6, 4), 3.0), 1.0)  # wider than the first: no regrowth, no copy
    avg.add("w", torch.full((3, 4), 5.0), 2.0, (slice(3, None),))
    assert avg._num["w"].data_ptr() == ptr
    avg.merge()
    expected = torch.tensor([[2.0, 2.0, 3.0, 3.0]] * 2 + [[3.0] * 4] + [[13 / 3] * 4] * 3)
    assert torch.equal(state["w"], expected)
    assert not avg._num  # freed as merged


# ---- the engine -------------------------------------------------------------------------------
@register
class ToyStream(ToyLinear):
    """ToyLinear merged by the streaming verbs; records how many updates are alive whenever one
    is folded in (the server should hold only the one being folded)."""

    name = "toy-stream"
    last: ToyStream | None = None

    def __init__(self, cfg, info) -> None:
        super().__init__(cfg, info)
        self.events: list[tuple[str, int | None]] = []
        self.alive_max = 0
        self._refs: list[weakref.ref] = []
        ToyStream.last = self

    def begin_aggregate(self, round_idx: int | None = None) -> None:
        self.events.append(("begin", round_idx))
        self._sum = {"weight": torch.zeros_like(self.weight), "bias": torch.zeros_like(self.bias)}
        self._total = 0.0

    def accumulate(self, task: Task, update: Update, weight: float) -> None:
        self._refs.append(weakref.ref(update))
        self.alive_max = max(self.alive_max, sum(r() is not None for r in self._refs))
        self.events.append(("add", task.client))
        for key, acc in self._sum.items():
            acc.add_(update.tensors[key], alpha=weight)
        self._total += weight

    def end_aggregate(self) -> None:
        self.events.append(("end", None))
        self.weight = self._sum["weight"] / self._total
        self.bias = self._sum["bias"] / self._total
        self.aggregated_rounds += 1


def test_engine_streams_and_holds_one_update_at_a_time(tmp_path) -> None:
    cfg = toy_config(algorithm="toy-stream", rounds=2, participation=3)
    run_training(cfg, tmp_path, federation=toy_federation(), progress=False)
    alg = ToyStream.last
    assert alg.alive_max == 1  # a list-holding engine would reach 3
    rounds = [e for e in alg.events if e[0] == "begin"]
    assert rounds == [("begin", 0), ("begin", 1)]
    assert [e[0] for e in alg.events] == ["begin", "add", "add", "add", "end"] * 2
    assert alg.aggregated_rounds == 2


def test_engine_result_does_not_depend_on_the_merge_form(tmp_path) -> None:
    """ToyStream folds w*u and divides at the end; ToyLinear sums u*(w/total): the same
    average, equal within float rounding over a whole run."""
    for name, algorithm in (("list", ToyLinear.name), ("stream", ToyStream.name)):
        cfg = toy_config(rounds=3, algorithm=algorithm)
        run_training(cfg, tmp_path / name, federation=toy_federation(), progress=False)
    a = load_checkpoint(tmp_path / "list" / "checkpoint.pt")["algorithm"]
    b = load_checkpoint(tmp_path / "stream" / "checkpoint.pt")["algorithm"]
    assert torch.allclose(a["weight"], b["weight"], rtol=0, atol=1e-6)
    assert not torch.equal(a["weight"], torch.zeros_like(a["weight"]))


# ---- a whole run of a real method: streaming vs the list form --------------------------------
@register
class _ListHeteroFL(get_algorithm("heterofl")):  # type: ignore[misc]
    """HeteroFL forced onto the list path (aggregate overridden), for the engine comparison."""

    name = "heterofl-list-test"

    def aggregate(self, updates: list[Triple]) -> None:
        super().aggregate(updates)


@pytest.mark.slow  # two 2-round runs of the Digits model: ~5 s on 2 shared cores
def test_engine_run_streaming_equals_list_run_bit_for_bit(tmp_path) -> None:
    outs = {}
    for algorithm in ("heterofl", "heterofl-list-test"):
        fed = toy_federation(num_clients=4, n_train=(12, 9, 10, 8), n_val=4, num_classes=10,
                             shape=SHAPE)  # fmt: skip
        for client, budget in zip(fed.clients, (1.0, 0.5, 0.25, 0.125), strict=True):
            client.budget = budget
        cfg = toy_config(algorithm=algorithm, arch="digit", budgets="8-4-2-1", rounds=2)
        outs[algorithm] = tmp_path / algorithm
        run_training(cfg, outs[algorithm], federation=fed, progress=False)
    a = load_checkpoint(outs["heterofl"] / "checkpoint.pt")["algorithm"]["server"]
    b = load_checkpoint(outs["heterofl-list-test"] / "checkpoint.pt")["algorithm"]["server"]
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
