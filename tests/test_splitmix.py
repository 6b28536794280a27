"""Split-Mix algorithm (docs/paper.md#split-mix, #dual-bn, #adversarial): bases per budget, base
sampling, masked aggregation, ensembles, dual BN, adversarial loss, checkpoint round trip,
end-to-end learning."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitmix.config import run_config_from_dict
from splitmix.data.clients import Client, Federation
from splitmix.errors import ConfigError
from splitmix.fl.adversarial import pgd
from splitmix.fl.algorithm import FederationInfo, Task
from splitmix.methods import get_algorithm
from splitmix.models import DigitModel, bn_mode
from splitmix.seeding import rng
from splitmix.splitmix import CyclicShuffleSampler, SplitMix, count_bases

pytestmark = pytest.mark.usefixtures("one_thread")


def make_alg(
    budgets: str = "8-4-2-1",
    client_budgets: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0),
    *,
    bn: str = "batch",
    lam: float = 0.0,
    steps: int = 7,
    init_seed: int = 0,
    seed: int = 1,
    **params,
) -> SplitMix:
    cfg = run_config_from_dict(
        {
            "dataset": "digits",
            "split": "t",
            "method": "splitmix",
            "algorithm": "splitmix",
            "arch": "digit",
            "seed": seed,
            "bn": bn,
            "budgets": budgets,
            "adv": {"lam": lam, "steps": steps},
            "method_params": params,
        }
    )
    n = len(client_budgets)
    info = FederationInfo(
        num_clients=n,
        budgets=np.array(client_budgets, dtype=float),
        weights=np.full(n, 1.0 / n),
        num_classes=10,
        input_shape=(3, 28, 28),
        arch="digit",
    )
    alg = get_algorithm("splitmix")(cfg, info)
    assert isinstance(alg, SplitMix)
    alg.init_global(torch.Generator().manual_seed(init_seed))
    return alg


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def local_train(alg: SplitMix, task: Task, steps: int = 1, seed: int = 0):
    """The engine's local loop: fresh SGD, zero_grad / train_step / step."""
    model = alg.download(task)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
    )
    for s in range(steps):
        x, y = batch(seed=seed * 100 + s)
        opt.zero_grad(set_to_none=True)
        alg.train_step(model, task, x, y, F.cross_entropy)
        opt.step()
    return alg.upload(task, model)


def run_round(alg: SplitMix, r: int, clients: list[int]) -> list[Task]:
    tasks = alg.plan(r, clients, rng(7, f"plan/{r}"))
    updates = []
    for t in tasks:
        torch.manual_seed(1000 * r + t.client)
        updates.append((t, local_train(alg, t, seed=r * 10 + t.client), 1.0 + t.client))
    alg.aggregate(updates)
    return tasks


# ---- budgets -> bases ----------------------------------------------------------------------------
def test_bases_per_budget_default_atom():
    alg = make_alg()
    assert alg.num_base == 8 and len(alg.server.bases) == 8
    assert alg.client_bases == [1, 2, 4, 8]
    assert alg.describe()["bases_per_budget"] == {"0.125": 1, "0.25": 2, "0.5": 4, "1": 8}
    assert alg.eval_widths() == [0.125, 0.25, 0.5, 1.0]


def test_bases_per_budget_max_half():
    alg = make_alg("8-4-8d3-2", (0.125, 0.25, 0.375, 0.5))
    assert alg.num_base == 4 and len(alg.server.bases) == 4
    assert alg.client_bases == [1, 2, 3, 4]
    assert alg.eval_widths() == [0.125, 0.25, 0.375, 0.5]
    with pytest.raises(ConfigError, match="needs 8 bases"):
        alg.assemble(1.0)


def test_count_bases_is_float_robust():
    assert count_bases(0.3, 0.1) == 3  # plain int(0.3 / 0.1) would give 2
    assert count_bases(0.375, 0.125) == 3


def test_atom_wider_than_smallest_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="atom 0.25 exceeds the smallest budget"):
        make_alg(atom=0.25)


def test_unknown_method_param_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_alg(atoms=0.125)


# ---- base sampling -------------------------------------------------------------------------------
def test_sampled_bases_distinct_and_counted():
    alg = make_alg()
    for r in range(30):
        for t in alg.plan(r, [0, 1, 2, 3], rng(1, f"p{r}")):
            assert len(t.bases) == alg.client_bases[t.client]
            assert len(set(t.bases)) == len(t.bases)
            assert all(0 <= b < alg.num_base for b in t.bases)
    # a full-budget client trains every base each round
    assert sorted(alg.plan(99, [3], rng(1, "x"))[0].bases) == list(range(8))


def test_first_bases_follow_the_cyclic_sampler():
    """First picks across successive clients: each aligned block of num_base is a permutation,
    so over any prefix the counts per base differ by at most 1 (docs/paper.md#split-mix)."""
    alg = make_alg(client_budgets=(0.125, 0.125, 0.125, 0.5, 1.0))
    firsts = []
    small: Counter[int] = Counter()
    for r in range(64):
        for t in alg.plan(r, [0, 1, 2, 3, 4], rng(3, f"p{r}")):
            firsts.append(t.bases[0])
            if alg.client_bases[t.client] == 1:
                small[t.bases[0]] += 1
            counts = Counter(firsts)
            full = [counts[b] for b in range(8)]
            assert max(full) - min(full) <= 1
    for i in range(0, len(firsts) - 7, 8):
        assert sorted(firsts[i : i + 8]) == list(range(8))
    # the smallest clients alone: 192 first picks spread over all 8 bases, none starved
    assert set(small) == set(range(8))
    assert max(small.values()) - min(small.values()) <= 16
    # the cycle is re-shuffled, not repeated
    assert firsts[:8] != firsts[8:16] or firsts[8:16] != firsts[16:24]


def test_sampler_state_round_trip():
    a = CyclicShuffleSampler(5, np.random.default_rng(0))
    g = np.random.default_rng(1)
    for _ in range(3):
        a.next(g)
    b = CyclicShuffleSampler(5, np.random.default_rng(99))
    b.load(a.state())
    g1, g2 = np.random.default_rng(2), np.random.default_rng(2)
    assert [a.next(g1) for _ in range(12)] == [b.next(g2) for _ in range(12)]


# ---- download / upload / aggregate ---------------------------------------------------------------
def test_download_holds_only_the_sampled_bases_in_order():
    alg = make_alg()
    task = Task(client=2, bases=(5, 1, 6, 3))
    model = alg.download(task)
    assert isinstance(model, nn.ModuleList) and len(model) == 4
    for m, s in zip(model, task.bases, strict=True):
        for (k, v), (k2, v2) in zip(
            m.state_dict().items(), alg.server.bases[s].state_dict().items(), strict=True
        ):
            assert k == k2 and torch.equal(v, v2)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 4 * sum(p.numel() for p in alg.server.bases[0].parameters())
    up = local_train(alg, task)
    assert set(up.tensors) == {
        f"bases.{s}.{k}" for s in task.bases for k in alg.server.bases[s].state_dict()
    }
    assert up.nbytes() == alg.download_bytes(task)


def test_aggregate_averages_each_base_over_its_trainers_only():
    alg = make_alg()
    before = {k: v.clone() for k, v in alg.server.state_dict().items()}
    ta, tb = Task(client=0, bases=(0, 1)), Task(client=1, bases=(1, 2))
    ua = local_train(alg, ta, steps=2, seed=1)
    ub = local_train(alg, tb, steps=2, seed=2)
    wa, wb = 0.25, 0.75
    alg.aggregate([(ta, ua, wa), (tb, ub, wb)])
    after = alg.server.state_dict()
    for key, value in after.items():
        s = int(key.split(".")[1])
        if s == 0:
            expected = ua.tensors[key]
        elif s == 1:
            expected = (wa * ua.tensors[key] + wb * ub.tensors[key]) / (wa + wb)
        elif s == 2:
            expected = ub.tensors[key]
        else:
            expected = before[key]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=key)
    # the trained bases did move
    assert not torch.equal(after["bases.1.conv1.weight"], before["bases.1.conv1.weight"])


def test_local_bn_is_kept_per_client_and_never_uploaded():
    alg = make_alg(bn="local")
    task = Task(client=1, bases=(0, 3))
    up = local_train(alg, task)
    assert up.tensors and not any(".bn" in k for k in up.tensors)
    assert any(k.startswith("bases.3.bn1.") for k in alg.local[1])
    # the client's own BN comes back in its assembled model; another client sees the server's
    own = alg.assemble(1.0, client=1).bases[3].bn1.running_mean.clone()
    other = alg.assemble(1.0, client=0).bases[3].bn1.running_mean.clone()
    assert torch.equal(own, alg.local[1]["bases.3.bn1.running_mean"])
    assert torch.equal(other, alg.server.state_dict()["bases.3.bn1.running_mean"])
    assert not torch.equal(own, other)


# ---- evaluation models ---------------------------------------------------------------------------
def _server_logits(alg: SplitMix, idxs, x) -> list[torch.Tensor]:
    out = []
    for i in idxs:
        base = copy.deepcopy(alg.server.bases[i]).eval()
        with torch.no_grad():
            out.append(base(x))
    return out


def test_assemble_is_the_mean_of_the_first_bases_logits():
    alg = make_alg()
    run_round(alg, 0, [0, 1, 2, 3])
    x, _ = batch(16, seed=5)
    for width, n in ((0.125, 1), (0.5, 4), (1.0, 8)):
        model = alg.assemble(width)
        assert not model.training and len(model.bases) == n
        with torch.no_grad():
            got = model(x)
        expected = torch.stack(_server_logits(alg, range(n), x)).mean(0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_sort_bases_puts_best_validated_bases_first():
    alg = make_alg(sort_bases=True)
    acc = [0.1, 0.5, 0.3, 0.9, 0.2, 0.9, 0.0, 0.4]
    assert alg.sort_bases_by(acc) == [3, 5, 1, 7, 2, 4, 0, 6]
    x, _ = batch(8, seed=6)
    with torch.no_grad():
        got = alg.assemble(0.25)(x)
    expected = torch.stack(_server_logits(alg, [3, 5], x)).mean(0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert alg.extra_state()["base_order"][:2] == [3, 5]


def _randomize_bn(alg: SplitMix) -> None:
    """Give clean and noise BNs different statistics and affine params."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, t in alg.server.state_dict().items():
            if ".bn" in key and t.is_floating_point():
                if key.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                else:
                    t.copy_(
                        torch.randn(t.shape, generator=g) * 0.5 + (1.0 if "weight" in key else 0)
                    )


def test_dual_bn_endpoints_are_the_pure_clean_and_noise_models():
    alg = make_alg(bn="tracked", lam=0.5, steps=1)
    assert alg.dual and alg.norm == "dual-tracked"
    _randomize_bn(alg)
    x, _ = batch(8, seed=4)
    outs = {}
    for lam, branch in ((0.0, "clean"), (1.0, "noise")):
        with torch.no_grad():
            got = alg.assemble(0.25, lam)(x)
        refs = []
        for i in range(2):
            plain = DigitModel(0.125, norm="tracked", rescale_layer=True).eval()
            state = {
                k.replace(f".{branch}.", "."): v
                for k, v in alg.server.bases[i].state_dict().items()
                if ".clean." not in k and ".noise." not in k or f".{branch}." in k
            }
            plain.load_state_dict(state)
            with torch.no_grad():
                refs.append(plain(x))
        torch.testing.assert_close(got, torch.stack(refs).mean(0), rtol=1e-5, atol=1e-6)
        outs[lam] = got
    assert not torch.allclose(outs[0.0], outs[1.0])
    with torch.no_grad():
        mid = alg.assemble(0.25, 0.5)(x)
    assert not torch.allclose(mid, outs[0.0]) and not torch.allclose(mid, outs[1.0])
    # lam=None is the clean model
    with torch.no_grad():
        torch.testing.assert_close(alg.assemble(0.25)(x), outs[0.0])


def test_adversarial_train_step_loss_formula():
    """L = sum over bases of (1-lam) CE(clean BN, x) + lam CE(noise BN, x_adv), x_adv by PGD
    against that base's noise path, bases in sampled order (one PGD seed for the whole step)."""
    lam = 0.3
    alg = make_alg(lam=lam, steps=2)
    assert alg.dual
    task = Task(client=1, bases=(4, 2))
    model = alg.download(task)
    ref = copy.deepcopy(model)  # same tensors, trained separately below
    x, y = batch(8, seed=9)
    torch.manual_seed(42)
    got = alg.train_step(model, task, x, y, F.cross_entropy)

    torch.manual_seed(42)
    expected, clean_only = 0.0, 0.0
    for base in ref:
        with bn_mode(base, "noise"):
            x_adv = pgd(base, x, y, alg.cfg.adv)
            adv_ce = F.cross_entropy(base(x_adv), y)
        with bn_mode(base, "clean"):
            clean_ce = F.cross_entropy(base(x), y)
        assert (x_adv - x).abs().max() > 0
        assert (x_adv - x).abs().max() <= alg.cfg.adv.eps + 1e-6
        loss = (1 - lam) * clean_ce + lam * adv_ce
        loss.backward()
        expected += loss.item()
        clean_only += clean_ce.item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert abs(got - clean_only) > 1e-3  # the adversarial term is really there
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_loss_temperature():
    x, y = batch(8, seed=2)
    task = Task(client=0, bases=(0,))
    plain, auto = make_alg(), make_alg(loss_temp="auto")
    m = plain.download(task)
    with torch.no_grad():
        logits = m[0](x)
    got = auto.train_step(auto.download(task), task, x, y, F.cross_entropy)
    assert got == pytest.approx((F.cross_entropy(logits / 0.125, y) * 0.125).item(), rel=1e-5)
    with pytest.raises(ConfigError, match="loss_temp"):
        make_alg(loss_temp="hot")


# ---- checkpoint ----------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_identically():
    clients = [0, 1, 2, 3, 4]
    budgets = (0.125, 0.125, 0.25, 0.5, 0.125)
    a = make_alg(client_budgets=budgets)
    for r in range(2):
        run_round(a, r, clients)
    state = copy.deepcopy(a.state_dict())
    b = make_alg(client_budgets=budgets, init_seed=5, seed=1)
    b.load_state_dict(state)
    for r in range(2, 4):
        ta, tb = run_round(a, r, clients), run_round(b, r, clients)
        assert ta == tb
    for (ka, va), (kb, vb) in zip(
        a.server.state_dict().items(), b.server.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.extra_state() == b.extra_state()


# ---- end to end ----------------------------------------------------------------------------------
def _federation(num_clients: int = 4, n_train: int = 48, num_classes: int = 4) -> Federation:
    """28x28 uint8 images; each class has its own mean pattern (learnable in a few rounds)."""
    g = torch.Generator().manual_seed(0)
    protos = torch.randint(30, 226, (num_classes, 3, 28, 28), generator=g).float()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = protos[y] + 40 * torch.randn(n, 3, 28, 28, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    budgets = (0.125, 0.25, 0.5, 1.0)
    clients = []
    for i in range(num_clients):
        (tx, ty), (vx, vy), (sx, sy) = draw(n_train), draw(24), draw(24)
        clients.append(
            Client(i, f"syn-{i}", "syn", tx, ty, vx, vy, sx, sy, budgets[i % 4], 1 / num_clients)
        )
    return Federation("syn", "syn", ("syn",), num_classes, (3, 28, 28), clients)


def test_a_few_rounds_learn_above_chance_fused_or_not(tmp_path):
    """Through the engine: validation beats chance and the loss falls round after round; the
    fused run follows the sequential one (same maths, same random streams)."""
    import pandas as pd

    from splitmix.fl.engine import LOG
    from splitmix.training import run_training

    logs = []
    for fused in (False, True):
        cfg = run_config_from_dict(
            {
                "dataset": "syn",
                "split": "syn",
                "method": "splitmix",
                "algorithm": "splitmix",
                "arch": "digit",
                "augment": "none",
                "rounds": 3,
                "batch_size": 16,
                "test_batch_size": 32,
                "lr": 0.01,
                "lr_schedule": "none",
                "threads": 1,
                "checkpoint_every": 2,
                "split_config": {"kind": "iid"},
                "method_params": {"fused": fused},
            }
        )
        out = tmp_path / f"fused{fused}"
        result = run_training(cfg, out, federation=_federation(), progress=False)
        assert result["rounds_done"] == 3
        assert result["best_metric"] > 0.5  # chance is 0.25 with 4 classes
        log = pd.read_csv(out / LOG)
        for col in ("train_loss", "val_loss@1", "val_loss@0.125"):
            assert (log[col].diff().dropna() < 0).all(), col
        logs.append(log)
    cols = [c for c in logs[0].columns if c.startswith(("val_", "train_loss", "bytes"))]
    # not bitwise: ~1e-7 summation-order differences may tip an activation across a ReLU kink,
    # and three rounds of SGD amplify them (0.2% in a validation loss on an AMD EPYC machine,
    # under 0.1% on another); tests/fl/test_fused.py checks one step to 1e-6
    pd.testing.assert_frame_equal(logs[0][cols], logs[1][cols], rtol=1e-2)
