"""DepthFL (baselines/depthfl.py): depth masks, per-layer averaging, the distillation loss, the
ensemble, cost per depth and an exact resume, checked against hand-computed numbers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fl.toy import toy_config, toy_federation

from baselines.depthfl import (
    DepthFL,
    build_depth_net,
    consistency_weight,
    depthfl_loss,
    depths_for_widths,
    ensemble,
    mutual_distillation,
)
from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.evaluate.cost import model_cost
from splitmix.fl.algorithm import FederationInfo, Task
from splitmix.fl.checkpoint import load_checkpoint
from splitmix.fl.engine import make_generator
from splitmix.methods import get_algorithm
from splitmix.models import build_model
from splitmix.training import run_training

SHAPE = (3, 28, 28)
pytestmark = pytest.mark.usefixtures("one_thread")


def make(
    budgets: np.ndarray,
    *,
    spec: str = "8-4-2-1",
    weights: np.ndarray | None = None,
    bn: str = "batch",
    arch: str = "digit",
    shape: tuple[int, int, int] = SHAPE,
    **params: object,
) -> DepthFL:
    k = len(budgets)
    info = FederationInfo(
        num_clients=k,
        budgets=np.asarray(budgets, dtype=float),
        weights=np.full(k, 1.0 / k) if weights is None else np.asarray(weights),
        num_classes=10,
        input_shape=shape,
        arch=arch,
    )
    cfg = RunConfig(
        dataset="digits",
        split="s",
        method="depthfl",
        algorithm="depthfl",
        bn=bn,
        budgets=spec,
        rounds=10,
        method_params=dict(params),
    )
    alg = get_algorithm("depthfl")(cfg, info)
    alg.init_global(torch.Generator().manual_seed(1))
    return alg


def batch(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def top_modules(keys) -> set[tuple[str, int]]:
    """``stages.2.x.weight`` -> ("stages", 2)."""
    return {(k.split(".")[0], int(k.split(".")[1])) for k in keys}


# ---- budgets -> depths -> exchanged keys ---------------------------------------------------------
def test_width_to_depth_mapping() -> None:
    assert depths_for_widths([0.125, 0.25, 0.5, 1.0, 1.0]) == {0.125: 1, 0.25: 2, 0.5: 3, 1.0: 4}
    # fewer widths: the widest keeps the full depth, each narrower one a stage less
    assert depths_for_widths([0.5, 1.0]) == {0.5: 3, 1.0: 4}
    assert depths_for_widths([1.0]) == {1.0: 4}
    with pytest.raises(ConfigError, match="5 widths and the model 4 stages"):
        depths_for_widths([1 / 16, 0.125, 0.25, 0.5, 1.0])


def test_depth1_digit_client_exchanges_conv1_and_its_exit_only() -> None:
    alg = make(np.array([0.125, 0.25, 0.5, 1.0]))
    keys = set(alg.exchange_blocks(Task(client=0, widths=(0.125,))))
    # by hand: conv1 + bn1 (batch BN: affine only), then the exit: depthwise conv, pointwise,
    # norm, depthwise, pointwise, norm, (pool, flatten) linear
    assert keys == {
        "stages.0.0.weight",
        "stages.0.0.bias",
        "stages.0.1.weight",
        "stages.0.1.bias",
        "exits.0.0.0.weight",
        "exits.0.0.1.weight",
        "exits.0.0.2.weight",
        "exits.0.0.2.bias",
        "exits.0.0.4.weight",
        "exits.0.0.5.weight",
        "exits.0.0.6.weight",
        "exits.0.0.6.bias",
        "exits.0.3.weight",
        "exits.0.3.bias",
    }
    assert tuple(alg.server.state_dict()["exits.0.3.weight"].shape) == (10, 128)


@pytest.mark.parametrize(("budget", "depth"), [(0.125, 1), (0.25, 2), (0.5, 3), (1.0, 4)])
def test_each_budget_exchanges_its_first_stages_and_exits(budget: float, depth: int) -> None:
    alg = make(np.array([0.125, 0.25, 0.5, 1.0]))
    client = [0.125, 0.25, 0.5, 1.0].index(budget)
    task = alg.plan(0, [client], np.random.default_rng(0))[0]
    assert task.widths == (budget,) and task.payload == {"depth": depth}
    blocks = alg.exchange_blocks(task)
    assert all(b is None for b in blocks.values())  # whole tensors, never slices
    want = {(kind, i) for kind in ("stages", "exits") for i in range(depth)}
    assert top_modules(blocks) == want
    # every server key of those modules, and the upload is exactly them
    server = {k for k in alg.server.state_dict() if top_modules([k]) <= want}
    assert set(blocks) == server
    assert set(alg.upload(task, alg.download(task)).tensors) == server


def test_tracked_bn_uploads_running_stats_local_bn_keeps_them() -> None:
    tracked = make(np.array([0.125, 1.0]), bn="tracked")
    task = Task(client=0, widths=(0.125,))
    up = tracked.upload(task, tracked.download(task))
    assert {"stages.0.1.running_mean", "exits.0.0.2.running_var"} <= set(up.tensors)

    local = make(np.array([0.125, 1.0]), bn="local")
    task = Task(client=0, widths=(0.125,))
    up = local.upload(task, local.download(task))
    assert not set(up.tensors) & local.local_keys
    assert "stages.0.0.weight" in up.tensors
    kept = set(local.local[0])
    # the client keeps the norm tensors of its depth only: bn1 and the exit's two norms
    assert top_modules(kept) == {("stages", 0), ("exits", 0)}
    assert "stages.0.1.num_batches_tracked" in kept and "exits.0.0.6.running_mean" in kept


def test_budget_outside_the_budget_string_and_adversarial_training_are_refused() -> None:
    with pytest.raises(ConfigError, match="budget 0.3"):
        make(np.array([0.3, 1.0]))
    with pytest.raises(ConfigError, match="supported: digit, preresnet18, alexnet"):
        make(np.array([1.0]), arch="toy")
    with pytest.raises(ConfigError, match="temperature"):
        make(np.array([1.0]), temperature=0.0)


def test_config_validation_refuses_bad_parameter_values_before_any_job() -> None:
    from splitmix.methods import check_params

    # a real dataset name: validation refuses the toy's (a test-only name)
    cfg = toy_config(algorithm="depthfl", method="depthfl", arch="digit", dataset="digits-mini")
    for bad, rule in (
        ({"kd_weight": -1.0}, r"params.kd_weight: -1.0 is less than the minimum of 0"),
        ({"temperature": 0}, r"params.temperature: 0 is less than or equal to the minimum"),
    ):
        with pytest.raises(ConfigError, match=rule):
            check_params(dataclasses.replace(cfg, method_params=bad))


# ---- aggregation ---------------------------------------------------------------------------------
def test_per_layer_average_over_the_clients_that_hold_the_layer() -> None:
    # client 0 depth 1 (weight 1/4), client 1 depth 2 (weight 3/4)
    alg = make(np.array([0.125, 0.25]), weights=np.array([0.25, 0.75]))
    before = {k: v.clone() for k, v in alg.server.state_dict().items()}
    updates = []
    for client, width, value in ((0, 0.125, 1.0), (1, 0.25, 3.0)):
        task = Task(client=client, widths=(width,))
        model = alg.download(task)
        with torch.no_grad():
            for t in model.state_dict().values():
                t.fill_(value)
        updates.append((task, alg.upload(task, model), float(alg.info.weights[client])))
    alg.aggregate(updates)
    for key, value in alg.server.state_dict().items():
        held = top_modules([key]).pop()
        if held[1] == 0:  # both clients: (1/4 * 1 + 3/4 * 3) / (1/4 + 3/4)
            assert torch.allclose(value, torch.full_like(value, 2.5)), key
        elif held[1] == 1:  # the depth-2 client alone
            assert torch.equal(value, torch.full_like(value, 3.0)), key
        else:  # nobody held stages 3-4: unchanged
            assert torch.equal(value, before[key]), key


# ---- the loss ------------------------------------------------------------------------------------
def test_distillation_is_zero_when_all_classifiers_agree() -> None:
    z = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (5,))
    assert float(mutual_distillation([z, z.clone(), z.clone()])) == pytest.approx(0.0, abs=1e-7)
    loss = depthfl_loss([z, z.clone(), z.clone()], y, F.cross_entropy, kd_weight=1.0)
    assert float(loss) == pytest.approx(3 * float(F.cross_entropy(z, y)), rel=1e-6)


def test_distillation_value_and_gradient_by_hand() -> None:
    z1 = torch.tensor([[2.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    p1 = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    p2 = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    kl_21 = float(np.sum(p2 * np.log(p2 / p1)))  # KL(p2 || p1): exit 1 learns from exit 2
    kl_12 = float(np.sum(p1 * np.log(p1 / p2)))
    loss = mutual_distillation([z1, z2])  # n = 2: divided by n - 1 = 1
    assert float(loss.detach()) == pytest.approx(kl_21 + kl_12, rel=1e-6)
    loss.backward()
    # the target is detached: d KL(p2 || p1) / d z1 = p1 - p2, and z1 gets nothing from KL(p1||p2)
    assert np.allclose(z1.grad.numpy(), [p1 - p2], atol=1e-6)
    assert np.allclose(z2.grad.numpy(), [p2 - p1], atol=1e-6)
    # temperature T: T^2 * KL between softmax(z / T)
    t = 2.0
    q1 = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()  # softmax(z1 / 2)
    q2 = np.exp([0.0, 0.5]) / np.exp([0.0, 0.5]).sum()
    by_hand = t * t * (np.sum(q2 * np.log(q2 / q1)) + np.sum(q1 * np.log(q1 / q2)))
    assert float(mutual_distillation([z1, z2], t).detach()) == pytest.approx(by_hand, rel=1e-6)


def test_three_exits_average_the_kl_over_the_other_two() -> None:
    zs = [torch.randn(4, 5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    pairs = sum(
        F.kl_div(F.log_softmax(zs[i], 1), F.softmax(zs[j], 1), reduction="batchmean")
        for i in range(3)
        for j in range(3)
        if i != j
    )
    assert float(mutual_distillation(zs)) == pytest.approx(float(pairs) / 2, rel=1e-5)


def test_consistency_weight_ramp() -> None:
    assert consistency_weight(0, 3.0, 1.0) == pytest.approx(math.exp(-5.0))
    assert consistency_weight(1, 3.0, 2.0) == pytest.approx(2.0 * math.exp(-5.0 * 4 / 9))
    assert consistency_weight(3, 3.0, 1.0) == 1.0
    assert consistency_weight(9, 3.0, 1.0) == 1.0
    assert consistency_weight(0, 0.0, 0.5) == 0.5
    alg = make(np.array([1.0]), kd_rampup=0.3)  # 10 rounds: ramp over 3
    assert alg.kd_weight_at(1) == pytest.approx(math.exp(-5.0 * 4 / 9))


# ---- models: ensemble, exact split, cost ---------------------------------------------------------
def test_ensemble_is_the_mean_of_the_exit_logits() -> None:
    alg = make(np.array([0.125, 0.25, 0.5, 1.0]))
    x, _ = batch()
    model = alg.assemble(0.5)  # depth 3
    assert not model.training and model.depth == 3
    with torch.no_grad():
        z = alg.server.eval().exit_logits(x)
        got = model(x)
    assert torch.allclose(got, (z[0] + z[1] + z[2]) / 3, atol=1e-6)
    assert torch.allclose(ensemble(z[:1]), z[0])


@pytest.mark.parametrize(("arch", "shape"), [("digit", SHAPE), ("preresnet18", (3, 16, 16))])
def test_full_depth_last_exit_is_the_plain_model(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(3)
    net = build_depth_net(arch, norm="batch", num_classes=10, input_shape=shape).eval()
    torch.manual_seed(3)  # the split builds the plain model first, from the same stream
    plain = build_model(arch, width=1.0, norm="batch", num_classes=10, input_size=shape[-1])
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net.exit_logits(x)[-1], plain.eval()(x), atol=1e-5)


@pytest.mark.parametrize(("arch", "shape"), [("digit", SHAPE), ("preresnet18", (3, 32, 32))])
def test_flops_and_params_rise_with_depth(arch: str, shape: tuple[int, int, int]) -> None:
    alg = make(np.array([0.125, 0.25, 0.5, 1.0]), arch=arch, shape=shape)
    costs = [model_cost(alg.assemble(w), shape) for w in alg.eval_widths()]
    flops = [c.flops for c in costs]
    params = [c.params for c in costs]
    assert flops == sorted(flops) and len(set(flops)) == 4, flops
    assert params == sorted(params) and len(set(params)) == 4, params
    # the full depth costs the plain model plus the three auxiliary exits, no more
    plain = build_model(arch, width=1.0, num_classes=10, input_size=shape[-1])
    assert costs[-1].flops > model_cost(plain, shape).flops
    assert costs[-1].params == sum(p.numel() for p in alg.server.parameters())


def test_depth1_client_computes_and_optimises_its_stage_only() -> None:
    alg = make(np.array([0.125, 1.0]))
    task = Task(client=0, widths=(0.125,))
    model = alg.download(task)
    full = alg._running  # the persistent copy whose view the client trains
    calls = []
    hooks = [s.register_forward_hook(lambda *_: calls.append(1)) for s in full.stages[1:]]
    x, y = batch()
    alg.train_step(model, task, x, y, F.cross_entropy)
    for h in hooks:
        h.remove()
    assert calls == []
    trained = {id(p) for p in model.parameters()}
    assert trained == {id(p) for m in (full.stages[0], full.exits[0]) for p in m.parameters()}


def test_train_step_loss_is_the_exit_ce_sum_plus_weighted_distillation() -> None:
    # 10 rounds, ramp-up 0.3: round 1 of the task weighs the distillation 0.5 exp(-5 (2/3)^2)
    alg = make(np.array([0.25, 1.0]), kd_weight=0.5, kd_rampup=0.3)
    task = alg.plan(1, [0], np.random.default_rng(0))[0]
    assert task.round == 1
    model = alg.download(task)
    x, y = batch()
    got = alg.train_step(model, task, x, y, F.cross_entropy)
    with torch.no_grad():
        z = model.exit_logits(x)
    kd = 0.5 * math.exp(-5.0 * 4 / 9) * mutual_distillation(z)
    want = F.cross_entropy(z[0], y) + F.cross_entropy(z[1], y) + kd
    assert float(mutual_distillation(z)) > 1e-3  # the distillation term counts in ``want``
    assert got == pytest.approx(float(want), rel=1e-6)


def test_describe_records_the_depth_axis() -> None:
    alg = make(np.array([0.125, 0.125, 0.5, 1.0]))
    d = alg.describe()
    assert d["size_axis"] == "depth"
    assert d["width_to_depth"] == {"0.125": 1, "0.25": 2, "0.5": 3, "1": 4}
    assert d["clients_per_depth"] == {"1": 2, "3": 1, "4": 1}
    n = d["state_numel_per_depth"]
    assert n["0.125"] < n["0.25"] < n["0.5"] < n["1"]
    assert n["1"] == sum(t.numel() for t in alg.server.state_dict().values())


# ---- the engine: a real run trains and resumes exactly -------------------------------------------
def _run(tmp, stop_after: int | None = None):
    fed = toy_federation(num_clients=4, n_train=(12, 9, 10, 8), n_val=4, num_classes=10,
                         shape=SHAPE)  # fmt: skip
    for client, budget in zip(fed.clients, (1.0, 0.5, 0.25, 0.125), strict=True):
        client.budget = budget
    cfg = toy_config(
        algorithm="depthfl", arch="digit", budgets="8-4-2-1", rounds=4, checkpoint_every=2
    )
    return run_training(cfg, tmp, federation=fed, progress=False, stop_after=stop_after)


@pytest.mark.slow  # three short runs of the Digits model: ~15 s on 2 shared cores
def test_engine_run_trains_and_resumes_bit_identically(tmp_path) -> None:
    _run(tmp_path / "straight")
    res = _run(tmp_path / "resumed", stop_after=3)  # killed after round 3, checkpoint at 2
    assert res["stopped"]
    _run(tmp_path / "resumed")
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in a["algorithm"]["server"].items():
        assert torch.equal(value, b["algorithm"]["server"][key]), key

    def rows(ckpt):  # the logs without their wall-clock column
        return [{k: v for k, v in r.items() if k != "seconds"} for r in ckpt["log_rows"]]

    assert rows(a) == rows(b) and len(rows(a)) == 4
    cols = [c for c in a["log_rows"][-1] if c.startswith("val_acc@")]
    assert sorted(cols) == ["val_acc@0.125", "val_acc@0.25", "val_acc@0.5", "val_acc@1"]
    # it trained: every float tensor moved from its init (each layer has the depth-4 client)
    cfg = toy_config(algorithm="depthfl", arch="digit", budgets="8-4-2-1")
    budgets = np.array([1.0, 0.5, 0.25, 0.125])
    info = FederationInfo(4, budgets, np.full(4, 0.25), 10, SHAPE, "digit")
    init = get_algorithm("depthfl")(cfg, info)
    init.init_global(make_generator(cfg.seed, "init", torch.device("cpu")))
    start = init.server.state_dict()
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert all(not torch.equal(start[k], a["algorithm"]["server"][k]) for k in floats)
