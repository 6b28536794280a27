"""FedAvg, HeteroFL and SHeteroFL on tiny synthetic data, driven like the engine drives them."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splitmix.config import AdvConfig, RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.fl.adversarial import pgd
from splitmix.fl.algorithm import Algorithm, FederationInfo, Task, Update
from splitmix.methods import get_algorithm
from splitmix.models import build_model

SHAPE = (3, 28, 28)


pytestmark = pytest.mark.usefixtures("one_thread")


def make(
    algorithm: str,
    *,
    budgets: str = "8-4-2-1",
    k: int = 4,
    bn: str = "batch",
    seed: int = 1,
    **params: object,
) -> Algorithm:
    info = FederationInfo(
        num_clients=k,
        budgets=assign_budgets(budgets, k),
        weights=np.full(k, 1.0 / k),
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
        budgets=budgets,
        method_params=dict(params),
    )
    alg = get_algorithm(algorithm)(cfg, info)
    alg.init_global(torch.Generator().manual_seed(seed))
    return alg


def data(client: int, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + client)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)


def train_client(alg: Algorithm, task: Task, steps: int = 2) -> Update:
    """What the engine does for one client: download, fresh SGD, steps, upload."""
    model = alg.download(task)
    opt = sgd(model)
    x, y = data(task.client)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        alg.train_step(model, task, x, y, F.cross_entropy)
        opt.step()
    return alg.upload(task, model)


def run_round(alg: Algorithm, r: int, clients: list[int]) -> list[tuple[Task, Update, float]]:
    updates = []
    for task in alg.plan(r, clients, np.random.default_rng(r)):
        torch.manual_seed(1000 * r + task.client)
        updates.append((task, train_client(alg, task), float(alg.info.weights[task.client])))
    alg.aggregate(updates)
    return updates


def server_state(alg: Algorithm) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in alg.server.state_dict().items()}


# ---- budgets -> widths ------------------------------------------------------------------------
def test_heterofl_trains_only_the_budget_width_sheterofl_all_below() -> None:
    het = make("heterofl", k=8)
    shet = make("sheterofl", k=8)
    clients = list(range(8))
    het_plan = {t.client: t.widths for t in het.plan(0, clients, np.random.default_rng(0))}
    shet_plan = {t.client: t.widths for t in shet.plan(0, clients, np.random.default_rng(0))}
    # 8-4-2-1 over 8 clients: two clients per budget, ascending by index (docs/paper.md#budgets)
    budgets = [0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    ladder = (0.125, 0.25, 0.5, 1.0)
    for k, b in enumerate(budgets):
        assert het_plan[k] == (b,)
        assert shet_plan[k] == tuple(w for w in ladder if w <= b)
    assert het.eval_widths() == shet.eval_widths() == list(ladder)


# ---- communication ------------------------------------------------------------------------------
def _digit_prefix_numel(r: float, tracked: bool) -> int:
    """Entries of the width-r prefix of the slimmable DigitModel, by hand
    (docs/paper.md#digitmodel)."""
    c1, c3 = math.ceil(64 * r), math.ceil(128 * r)
    f1, f2 = math.ceil(2048 * r), math.ceil(512 * r)
    bn = 4 if tracked else 2  # weight, bias (+ running mean, var)
    n = 3 * c1 * 25 + c1 + bn * c1  # conv1 (all 3 input channels) + bn1
    n += c1 * c1 * 25 + c1 + bn * c1  # conv2 + bn2
    n += c3 * c1 * 25 + c3 + bn * c3  # conv3 + bn3
    n += f1 * c3 * 49 + f1 + bn * f1  # fc1 (per-channel flatten) + bn4
    n += f2 * f1 + f2 + bn * f2  # fc2 + bn5
    n += 10 * f2 + 10  # fc3: all 10 outputs
    return n


@pytest.mark.parametrize("algorithm", ["heterofl", "sheterofl"])
def test_upload_is_exactly_the_prefix_blocks(algorithm: str) -> None:
    alg = make(algorithm, k=4)
    for task in alg.plan(0, [0, 1, 2, 3], np.random.default_rng(0)):
        model = alg.download(task)
        update = alg.upload(task, model)
        r = max(task.widths)
        assert update.nbytes() == 4 * _digit_prefix_numel(r, tracked=False)
        assert alg.download_bytes(task) == update.nbytes()
        server = alg.server.state_dict()
        for key, t in update.tensors.items():
            block = update.blocks[key]
            assert all(s.start == 0 for s in block)  # top-left prefix
            assert t.shape == server[key][block].shape


def test_tracked_bn_sends_private_bn_of_trained_widths_only() -> None:
    het = make("heterofl", k=4, bn="tracked")
    shet = make("sheterofl", k=4, bn="tracked")
    task_h = het.plan(0, [2], np.random.default_rng(0))[0]  # budget 0.5
    task_s = shet.plan(0, [2], np.random.default_rng(0))[0]
    up_h = het.upload(task_h, het.download(task_h))
    up_s = shet.upload(task_s, shet.download(task_s))
    bn_keys_h = {k.split("norms.")[1].split(".")[0] for k in up_h.tensors if "norms." in k}
    bn_keys_s = {k.split("norms.")[1].split(".")[0] for k in up_s.tensors if "norms." in k}
    assert bn_keys_h == {"2"}  # private BN index of width 0.5 in (1/8, 1/4, 1/2, 1)
    assert bn_keys_s == {"0", "1", "2"}
    # HeteroFL's bytes: the prefix with tracked BN (+ the int64 counters of 5 BN layers)
    assert up_h.nbytes() == 4 * _digit_prefix_numel(0.5, tracked=True) + 5 * 8


# ---- FedAvg ---------------------------------------------------------------------------------
def test_fedavg_equal_weights_is_the_mean_of_local_models() -> None:
    alg = make("fedavg", k=2, width=0.125)
    init = server_state(alg)
    # each client's local model, trained outside the method from the same start
    local = []
    for c in (0, 1):
        model = build_model("digit", width=0.125, norm="batch")
        model.load_state_dict(init)
        model.train()
        opt = sgd(model)
        x, y = data(c)
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        local.append(model.state_dict())
    updates = run_round(alg, 0, [0, 1])
    assert all(not u.blocks for _, u, _ in updates)  # whole tensors
    after = alg.server.state_dict()
    for key in after:
        expected = (local[0][key] + local[1][key]) / 2
        assert torch.allclose(after[key], expected, atol=1e-6), key
    assert not torch.allclose(after["conv1.weight"], init["conv1.weight"])  # it did train


def test_fedavg_describe_lists_budget_violated_clients() -> None:
    wide = make("fedavg", k=8, width=0.5).describe()
    assert wide["violated_clients"] == [0, 1, 2, 3]  # budgets 1/8, 1/8, 1/4, 1/4
    assert wide["budget_violating"] is True
    fair = make("fedavg", k=8, width=0.125).describe()
    assert fair["violated_clients"] == [] and fair["budget_violating"] is False


def test_fedavg_adversarial_step_uses_pgd_loss() -> None:
    alg = make("fedavg", k=2, width=0.125)
    alg.cfg = dataclasses.replace(alg.cfg, adv=AdvConfig(lam=1.0))
    task = alg.plan(0, [0], np.random.default_rng(0))[0]
    model = alg.download(task)
    x, y = data(0)
    torch.manual_seed(7)
    loss = alg.train_step(model, task, x, y, F.cross_entropy)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    expected = F.cross_entropy(model(pgd(model, x, y, alg.cfg.adv)), y)
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert loss > F.cross_entropy(model(x), y).item()
    assert all(g.abs().sum() > 0 for g in grads[:2])


# ---- local BN -------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fedavg", "sheterofl"])
def test_local_bn_stays_with_each_client(algorithm: str) -> None:
    params = {"width": 0.125} if algorithm == "fedavg" else {}
    budgets = "1" if algorithm == "fedavg" else "8-4"
    alg = make(algorithm, k=2, bn="local", budgets=budgets, **params)
    init = server_state(alg)
    local_keys = alg.local_keys
    assert local_keys and all(".bn" in f".{k}" for k in local_keys)
    updates = run_round(alg, 0, [0, 1])
    for _, update, _ in updates:
        assert not local_keys & set(update.tensors)
    after = alg.server.state_dict()
    for key in local_keys:  # never averaged: the server keeps its initial values
        assert torch.equal(after[key], init[key])
    # the clients' BN tensors differ from each other after a round
    shared = set(alg.local[0]) & set(alg.local[1])
    float_keys = [k for k in shared if alg.local[0][k].is_floating_point()]
    assert float_keys
    assert any(not torch.equal(alg.local[0][k], alg.local[1][k]) for k in float_keys)
    # assemble loads the client's own BN
    w = alg.eval_widths()[0]
    for c in (0, 1):
        state = alg.state_view(alg.assemble(w, None, c))
        compared = set(state) & set(alg.local[c])
        assert compared
        for key in compared:  # whole tensors: a dense BN, or one width's private BN
            assert torch.equal(state[key], alg.local[c][key]), key


# ---- HeteroFL ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_heterofl_at_full_width_is_fedavg(dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = make("fedavg", k=2, width=1.0)
    het = make("heterofl", k=2, budgets="1")
    if not dense:  # force the slimmable model instead of the dense stand-in
        monkeypatch.setattr(het, "dense_for", lambda width: None)
    for key, t in fed.server.state_dict().items():
        assert torch.equal(t, het.server.state_dict()[key]), key  # same init
    run_round(fed, 0, [0, 1])
    run_round(het, 0, [0, 1])
    het_state = het.server.state_dict()
    for key, t in fed.server.state_dict().items():
        assert torch.allclose(t, het_state[key], atol=1e-6), key


def test_dense_stand_in_trains_like_the_slimmable_subnet(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = make("heterofl", k=4)
    slow = make("heterofl", k=4)
    monkeypatch.setattr(slow, "dense_for", lambda width: None)
    task = fast.plan(0, [1], np.random.default_rng(0))[0]  # budget 1/4
    torch.manual_seed(0)
    up_fast = train_client(fast, task)
    torch.manual_seed(0)
    up_slow = train_client(slow, task)
    assert type(fast.running_model(task)).__name__ == "DigitModel"
    assert set(up_fast.tensors) == set(up_slow.tensors)
    for key, t in up_fast.tensors.items():
        assert up_fast.blocks[key] == up_slow.blocks[key]
        assert torch.allclose(t, up_slow.tensors[key], atol=1e-5), key


def test_heterofl_outer_channels_come_from_wide_clients_only() -> None:
    alg = make("heterofl", k=2, budgets="2-1")  # client 0: width 1/2, client 1: width 1
    before = server_state(alg)
    updates = run_round(alg, 0, [0, 1])
    (_, narrow, _), (_, wide, _) = updates
    after = alg.server.state_dict()
    key = "conv2.weight"  # 64 x 64 x 5 x 5; client 0 covers [:32, :32]
    inner = (slice(0, 32), slice(0, 32))
    assert torch.allclose(
        after[key][inner], (narrow.tensors[key] + wide.tensors[key][inner]) / 2, atol=1e-6
    )
    assert torch.equal(after[key][32:], wide.tensors[key][32:])
    assert torch.equal(after[key][:32, 32:], wide.tensors[key][:32, 32:])
    assert not torch.equal(after[key], before[key])


# ---- checkpointing ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "bn", "params"),
    [("sheterofl", "local", {}), ("fedavg", "tracked", {"width": 0.25})],
)
def test_state_dict_round_trip_resumes_identically(
    algorithm: str, bn: str, params: dict[str, object]
) -> None:
    budgets = "8-2"
    a = make(algorithm, k=2, bn=bn, budgets=budgets, **params)
    run_round(a, 0, [0, 1])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    run_round(a, 1, [0, 1])
    b = make(algorithm, k=2, bn=bn, budgets=budgets, seed=99, **params)  # different init
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=False))
    run_round(b, 1, [0, 1])
    sa, sb = a.state_dict(), b.state_dict()
    for key, t in sa["server"].items():
        assert torch.equal(t, sb["server"][key]), key
    assert sa["local"].keys() == sb["local"].keys()
    for c in sa["local"]:
        for key, t in sa["local"][c].items():
            assert torch.equal(t, sb["local"][c][key]), (c, key)


@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_sheterofl_budget_model_trains_as_the_full_slimmable_model(bn, monkeypatch):
    """A multi-width client below the widest budget trains the slimmable model cut to its budget
    prefix (faster); its update equals the one trained through the full model."""
    task = Task(client=1, widths=(0.125, 0.25))  # budget 1/4 on 8-4-2-1 with 4 clients
    fast = make("sheterofl", bn=bn)
    assert fast.budget_model(0.25) is not None
    got = train_client(fast, task, steps=3)
    full = make("sheterofl", bn=bn)
    monkeypatch.setattr(type(full), "budget_model", lambda self, budget: None)
    want = train_client(full, task, steps=3)
    assert set(got.tensors) == set(want.tensors)
    for key, value in got.tensors.items():
        assert value.shape == want.tensors[key].shape, key
        torch.testing.assert_close(value, want.tensors[key], rtol=1e-5, atol=1e-5, msg=key)
    moved = max(float((got.tensors[k] - full._server_state[k][b]).abs().max())
                for k, b in got.blocks.items())  # fmt: skip
    assert moved > 1e-3  # the client trained: the comparison is not of untouched tensors
