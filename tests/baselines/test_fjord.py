"""FjORD (baselines/fjord.py, docs/methods.md#fjord): width sampling, the distillation term, the
budget-sized model, upload blocks, per-entry aggregation, and an exact resume end to end."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fl.test_baselines import make as make_algorithm
from fl.test_batched import digits_config, max_diff, train_one_round
from fl.toy import toy_config, toy_federation

import baselines.fjord as fjord_module
from baselines.fjord import FjORD, distillation_loss, draw_width
from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, Task
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.models import count_params, prefix_blocks
from splitmix.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 28, 28)
LADDER = (0.125, 0.25, 0.5, 1.0)


def make(*, budgets: str = "8-4-2-1", k: int = 4, bn: str = "batch", **params) -> FjORD:
    alg = make_algorithm("fjord", budgets=budgets, k=k, bn=bn, **params)
    assert isinstance(alg, FjORD)
    return alg


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def task_of(alg: FjORD, client: int) -> Task:
    (task,) = alg.plan(0, [client], np.random.default_rng(0))
    return task


# ---- width sampling -----------------------------------------------------------------------------
def test_draw_width_is_uniform_over_the_allowed_widths() -> None:
    # Pearson's chi-square over 8,000 draws, 3 degrees of freedom: under uniformity it exceeds
    # 16.27 with probability 0.001; the seed is fixed, so this is deterministic.
    torch.manual_seed(7)
    n = 8000
    draws = [draw_width(LADDER) for _ in range(n)]
    counts = np.array([draws.count(w) for w in LADDER])
    chi2 = float(((counts - n / 4) ** 2 / (n / 4)).sum())
    assert counts.sum() == n
    assert chi2 < 16.27, counts


def test_draw_width_follows_the_global_seed() -> None:
    torch.manual_seed(3)
    first = [draw_width(LADDER) for _ in range(50)]
    torch.manual_seed(3)
    assert [draw_width(LADDER) for _ in range(50)] == first


def test_a_single_width_is_returned_without_a_draw() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert draw_width((0.125,)) == 0.125
    assert torch.equal(torch.get_rng_state(), state)


def test_plan_allows_every_width_up_to_the_budget() -> None:
    alg = make(k=8)
    budgets = [0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    for task, b in zip(alg.plan(0, list(range(8)), np.random.default_rng(0)), budgets, strict=True):
        assert task.widths == tuple(w for w in LADDER if w <= b)
    assert alg.eval_widths() == list(LADDER)


def test_trained_widths_never_exceed_the_budget_and_cover_it_uniformly(monkeypatch) -> None:
    """Every student width a budget-1/2 client trains is <= 1/2; the teacher is always 1/2."""
    alg = make(kd=True)
    task = task_of(alg, 2)  # budget 1/2
    model = alg.download(task)
    calls: list[float] = []
    real = model.set_width
    monkeypatch.setattr(model, "set_width", lambda w: (calls.append(w), real(w))[1])
    x, y = batch(n=2)
    steps = 90
    students = []
    torch.manual_seed(11)
    for _ in range(steps):
        calls.clear()
        alg.train_step(model, task, x, y, F.cross_entropy)
        assert calls[0] == 0.5  # the teacher: the budget width
        students.append(calls[1] if len(calls) > 1 else calls[0])  # one pass when p == budget
    assert set(students) <= {0.125, 0.25, 0.5}
    counts = np.array([students.count(w) for w in (0.125, 0.25, 0.5)])
    # 90 draws over 3 widths: expected 30 each; 2 degrees of freedom, 13.82 at p = 0.001
    assert float(((counts - 30) ** 2 / 30).sum()) < 13.82, counts


# ---- distillation -----------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_distillation_is_zero_when_student_equals_teacher(temperature) -> None:
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    student = logits.clone().requires_grad_(True)
    loss = distillation_loss(student, logits.clone(), temperature)
    loss.backward()
    assert loss.item() == 0.0
    # analytically 0 (softmax(s) - softmax(t)); only float rounding of sum(q) = 1 remains
    assert student.grad.abs().max().item() < 1e-7


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_is_t2_times_batch_mean_kl(temperature) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    q = np.exp(t.numpy() / temperature)
    q /= q.sum(1, keepdims=True)
    p = np.exp(s.numpy() / temperature)
    p /= p.sum(1, keepdims=True)
    kl = float((q * (np.log(q) - np.log(p))).sum(1).mean())
    got = distillation_loss(s, t, temperature).item()
    assert got == pytest.approx(temperature**2 * kl, rel=1e-5)
    assert got > 0


def test_distillation_gradient_equals_soft_label_cross_entropy_at_t1() -> None:
    """At T = 1 the gradient is the reference code's CE against softmax(teacher): (p - q) / B."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g, requires_grad=True)
    student = s.clone().requires_grad_(True)
    distillation_loss(student, t, 1.0).backward()
    expected = (s.softmax(1) - t.detach().softmax(1)) / 4
    torch.testing.assert_close(student.grad, expected)
    assert t.grad is None  # the teacher is detached


def _reference_grads(alg: FjORD, budget: float, p: float, x, y) -> dict[str, torch.Tensor]:
    """Flower's step on the FULL slimmable model: teacher CE backward, then the student's CE
    against the detached teacher softmax, backward; gradients keyed by server state key."""
    model = copy.deepcopy(alg.server).train()
    model.set_width(budget)
    teacher = model(x)
    F.cross_entropy(teacher, y).backward()
    model.set_width(p)
    F.cross_entropy(model(x), teacher.detach().softmax(1)).backward()
    return {n: prm.grad for n, prm in model.named_parameters() if prm.grad is not None}


def test_train_step_gradient_is_the_reference_update(monkeypatch) -> None:
    """Budget 1/2, student 1/8: the budget-sized model's gradients equal, block by block, those
    of the reference two-backward step on the full slimmable model."""
    alg = make()
    task = task_of(alg, 2)
    monkeypatch.setattr(fjord_module, "draw_width", lambda widths: 0.125)
    x, y = batch()
    model = alg.download(task)
    model.zero_grad(set_to_none=True)
    alg.train_step(model, task, x, y, F.cross_entropy)
    got = {n: prm.grad for n, prm in model.named_parameters() if prm.grad is not None}
    want = _reference_grads(alg, 0.5, 0.125, x, y)
    blocks = prefix_blocks(alg.server, 0.5)
    assert set(got) == set(want)
    for key, grad in want.items():
        torch.testing.assert_close(got[key], grad[blocks[key]], rtol=1e-4, atol=1e-6)


def test_student_at_the_budget_is_plain_cross_entropy(monkeypatch) -> None:
    alg = make()
    task = task_of(alg, 2)
    monkeypatch.setattr(fjord_module, "draw_width", lambda widths: max(widths))
    x, y = batch()
    model = alg.download(task)
    loss = alg.train_step(model, task, x, y, F.cross_entropy)
    model.set_width(0.5)
    with torch.no_grad():
        assert loss == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


@pytest.mark.parametrize(("params", "expected"), [({}, True), ({"kd": False}, True),
                                                  ({"kd_alpha": 0.5}, False)])  # fmt: skip
def test_only_a_plain_cross_entropy_step_is_batchable(params, expected) -> None:
    """A budget-1/8 client's step is ``CE(model(x), y)`` on the dense stand-in, drawing nothing
    (what client batching replays); with kd_alpha < 1 it is (2 - alpha) CE. Several widths: never.
    """
    alg = make(**params)
    task = task_of(alg, 0)  # budget 1/8: one allowed width
    assert alg.batchable(task) is expected
    assert not alg.batchable(task_of(alg, 1))
    x, y = batch()
    model = alg.download(task)
    state = torch.get_rng_state()
    loss = alg.train_step(model, task, x, y, F.cross_entropy)
    assert torch.equal(torch.get_rng_state(), state)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    plain = F.cross_entropy(model(x), y)
    plain.backward()
    same = loss == plain.item() and all(
        torch.equal(g, p.grad) for g, p in zip(got, model.parameters(), strict=True)
    )
    assert same is expected


@pytest.mark.slow
def test_client_batching_batches_the_single_width_clients_only(tmp_path) -> None:
    """Budgets 1/8, 1/8, 1/4, 1/2: the two budget-1/8 clients train as one vmapped group, the
    others (several widths, a drawn one per step) sequentially; in float64 every upload equals
    the sequential run's (tests/fl/test_batched.py explains why not float32)."""
    budgets, sizes = (0.125, 0.125, 0.25, 0.5), (40, 24, 58, 21)
    runs = {}
    for batching in (False, True):
        cfg = digits_config(batching, algorithm="fjord", method="fjord", method_params={})
        out = tmp_path / str(batching)
        runs[batching] = train_one_round(cfg, out, double=True, sizes=sizes, budgets=budgets)
    (seq, _, _), (bat, _, sequential) = runs[False], runs[True]
    assert sequential == [2, 3]
    diffs = max_diff(seq, bat)
    assert max(diffs.values()) < 1e-9, diffs
    assert diffs[2] == diffs[3] == 0.0  # the same sequential loop, bit for bit


def test_config_validation_refuses_bad_parameter_values_before_any_job() -> None:
    from splitmix.methods import check_params

    # a real dataset name: validation refuses the toy's (a test-only name)
    cfg = toy_config(algorithm="fjord", method="fjord", arch="digit", dataset="digits-mini")
    for bad, rule in (
        ({"kd_alpha": 1.5}, r"params.kd_alpha: 1.5 is greater than the maximum of 1"),
        ({"kd_temperature": 0}, r"params.kd_temperature: 0 is less than or equal to the minimum"),
        ({"kd": 1}, r"params.kd: 1 is not of type 'boolean'"),
    ):
        with pytest.raises(ConfigError, match=rule):
            check_params(dataclasses.replace(cfg, method_params=bad))


# ---- the budget-sized model ---------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_budget_model_holds_the_budget_block_and_the_same_function(bn) -> None:
    alg = make(bn=bn)
    model = alg.budget_model(0.5)
    assert model is not None and alg.budget_model(1.0) is None  # full budget: the full model
    state, server = model.state_dict(), alg.server.state_dict()
    blocks = alg.width_blocks((0.125, 0.25, 0.5))  # tracked BN: each width's own BN as well
    for key, block in blocks.items():
        assert state[key].shape == server[key][block].shape, key
    assert state["fc1.weight"].shape == (1024, 64 * 49)  # 2048/2 outputs, 128/2 channels x 7x7
    with torch.no_grad():  # the server's tensors (with tracked BN: statistics too)
        for key, block in blocks.items():
            state[key].copy_(server[key][block])
    x, _ = batch(n=4)
    slim = copy.deepcopy(alg.server)
    for w in (0.125, 0.25, 0.5):
        slim.set_width(w).eval()
        model.set_width(w).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), slim(x))


def test_a_cut_model_that_fails_its_check_falls_back_to_the_full_model(monkeypatch) -> None:
    alg = make()
    monkeypatch.setattr(FjORD, "_same_as_server", lambda self, model, widths: False)
    task = task_of(alg, 2)
    model = alg.download(task)
    assert model.state_dict()["fc1.weight"].shape == (2048, 128 * 49)  # the full slimmable model
    assert alg.describe()["budget_models"] == []
    x, y = batch()
    alg.train_step(model, task, x, y, F.cross_entropy)
    update = alg.upload(task, model)
    assert update.tensors["fc1.weight"].shape == (1024, 64 * 49)  # still the budget block


# ---- upload and aggregation -------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["batch", "tracked"])
def test_upload_covers_exactly_the_budget_prefix(bn) -> None:
    alg = make(bn=bn)
    x, y = batch()
    for client, budget in enumerate((0.125, 0.25, 0.5, 1.0)):
        task = task_of(alg, client)
        model = alg.download(task)
        alg.train_step(model, task, x, y, F.cross_entropy)
        update = alg.upload(task, model)
        expected: dict[str, tuple[slice, ...]] = {}
        for w in task.widths:  # shared tensors: the budget block; tracked BN: every width's own
            expected.update(prefix_blocks(alg.server, w))
        assert set(update.tensors) == set(expected)
        server = alg.server.state_dict()
        for key, value in update.tensors.items():
            assert value.shape == server[key][expected[key]].shape, key
        if bn == "batch":  # one model's worth of the budget width on the wire
            assert update.nbytes() == 4 * count_params(alg.server, budget)
            assert count_params(alg.server, budget) == sum(
                v.numel() for v in update.tensors.values()
            )


def test_aggregation_averages_each_entry_over_the_clients_that_covered_it() -> None:
    """Client A (budget 1/4, weight 1) sends 1s, client B (budget 1/2, weight 3) sends 3s:
    inside the 1/4 block each entry is (1*1 + 3*3) / 4 = 2.5, in the rest of the 1/2 block 3,
    outside the 1/2 block the server keeps its value."""
    alg = make()
    before = {k: v.clone() for k, v in alg.server.state_dict().items()}
    updates = []
    for client, value, weight in ((1, 1.0, 1.0), (2, 3.0, 3.0)):
        task = task_of(alg, client)
        model = alg.download(task)
        with torch.no_grad():
            for prm in model.parameters():
                prm.fill_(value)
        updates.append((task, alg.upload(task, model), weight))
    alg.aggregate(updates)
    w = alg.server.state_dict()["conv2.weight"]  # (64, 64, 5, 5); 1/4 -> 16, 1/2 -> 32
    assert torch.all(w[:16, :16] == 2.5)
    assert torch.all(w[:32, :32][16:, :] == 3.0) and torch.all(w[:16, 16:32] == 3.0)
    assert torch.equal(w[32:], before["conv2.weight"][32:])
    assert torch.equal(w[:, 32:], before["conv2.weight"][:, 32:])
    bias = alg.server.state_dict()["fc3.bias"]  # classifier: every output in every block
    assert torch.all(bias == 2.5)


# ---- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [{"kd_alpha": 1.5}, {"kd_temperature": 0}, {"kd": "yes"}, {"kd_alpha": True}],
)
def test_bad_parameters_fail_with_a_config_error(params) -> None:
    with pytest.raises(ConfigError, match="fjord"):
        make(**params)


def test_adversarial_training_is_refused() -> None:
    info = FederationInfo(1, np.ones(1), np.ones(1), 10, SHAPE, "digit")
    cfg = RunConfig(dataset="digits", split="s", method="fjord", algorithm="fjord", budgets="1")
    cfg = dataclasses.replace(cfg, adv=dataclasses.replace(cfg.adv, lam=0.5))
    with pytest.raises(ConfigError, match="adv.lam"):
        FjORD(cfg, info)


# ---- end to end: trains, and resumes bit-identically ---------------------------------------
def _federation():
    fed = toy_federation(num_clients=3, n_train=(10, 12, 14), n_val=8, num_classes=10, shape=SHAPE)
    budgets = (0.25, 0.5, 1.0)  # one client per width of "4-2-1"
    pairs = zip(fed.clients, budgets, strict=True)
    fed.clients = [dataclasses.replace(c, budget=b) for c, b in pairs]
    return fed


def _config():
    return toy_config(
        algorithm="fjord", method="fjord", arch="digit", budgets="4-2-1", rounds=4, batch_size=8
    )


def _algorithm_state(path) -> dict:
    return load_checkpoint(path / "checkpoint.pt")["algorithm"]


@pytest.mark.slow
def test_end_to_end_trains_and_resumes_bit_identically(tmp_path) -> None:
    """4 rounds straight vs. killed after 3 (checkpoint after round 2, so round 3 is redone with
    its per-batch width draws) and resumed: the same server state and logs, bit for bit."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    res = run_training(_config(), straight, federation=_federation(), progress=False)
    assert res["rounds_done"] == 4
    log = pd.read_csv(straight / "log.csv")
    assert [c for c in log.columns if c.startswith("val_acc@")] == [
        "val_acc@0.25",
        "val_acc@0.5",
        "val_acc@1",
    ]
    # it learns: 10 classes (chance 0.1); measured 2.21 -> 1.08 and 0.54 -> 0.79 on this seed
    assert log["train_loss"].iloc[-1] < 0.7 * log["train_loss"].iloc[0]
    assert log["val_acc@1"].iloc[-1] >= 0.5

    stopped = run_training(
        _config(), resumed, federation=_federation(), progress=False, stop_after=3
    )
    assert stopped["stopped"] and load_checkpoint(resumed / "checkpoint.pt")["round"] == 1
    run_training(_config(), resumed, federation=_federation(), progress=False)

    a, b = _algorithm_state(straight), _algorithm_state(resumed)
    assert a["server"].keys() == b["server"].keys()
    for key in a["server"]:
        assert torch.equal(a["server"][key], b["server"][key]), key
    assert a["local"] == b["local"] == {} and a["extra"] == b["extra"]
    for name in ("log.csv", "comm.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(straight / name).drop(columns=["seconds"]),
            pd.read_csv(resumed / name).drop(columns=["seconds"]),
            check_exact=True,
        )
