"""Clean and PGD accuracy of assembled models: batch semantics, the eps-ball, and dual-BN lambda."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from splitmix.config import AdvConfig, RunConfig
from splitmix.data.budgets import assign_budgets
from splitmix.evaluate.accuracy import (
    LARGE_BATCH,
    client_accuracy,
    eval_batch_size,
    uses_batch_statistics,
)
from splitmix.evaluate.robustness import adversarial_examples, attack_seed
from splitmix.evaluate.run import _assemble
from splitmix.fl.adversarial import pgd
from splitmix.fl.algorithm import FederationInfo
from splitmix.methods import get_algorithm
from splitmix.models import bn_mode, build_model

ADV = AdvConfig()  # eps 8/255, 7 steps of (10/255)/7, random start


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, seed: int = 0, shape=(3, 28, 28)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), torch.randint(
        0, 10, (n,), generator=g
    )


def _mlp(bn: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), bn, nn.ReLU(), nn.Linear(16, 2))


def test_batch_statistics_models_are_evaluated_in_test_batches():
    assert uses_batch_statistics(build_model("digit", width=0.125, norm="batch"))
    assert uses_batch_statistics(build_model("digit", slimmable=True, norm="batch"))
    assert not uses_batch_statistics(build_model("digit", width=0.125, norm="tracked"))
    assert not uses_batch_statistics(build_model("digit", width=0.125, norm="dual"))
    assert eval_batch_size(build_model("digit", width=0.125), 128) == 128
    assert eval_batch_size(build_model("digit", width=0.125, norm="tracked"), 128) == LARGE_BATCH


def test_batch_bn_accuracy_equals_the_paper_loader_batch_by_batch():
    model = _mlp(nn.BatchNorm1d(16, track_running_stats=False)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(23, 1, 4, 4, generator=g)
    y = torch.randint(0, 2, (23,), generator=g)
    bs = eval_batch_size(model, 5)
    got = client_accuracy(model, x, y, bs)
    with torch.no_grad():  # batches 5, 5, 5, 5, 3 in stored order
        want = sum(
            int((model(x[i : i + 5]).argmax(1) == y[i : i + 5]).sum()) for i in range(0, 23, 5)
        )
    assert (got.n, got.correct) == (23, want)


def test_a_lone_last_sample_joins_the_batch_before_it():
    """21 = 4 * 5 + 1: batch BN cannot normalise one sample (the original crashes), so the last
    batch is 5 + 1 = 6 samples."""
    model = _mlp(nn.BatchNorm1d(16, track_running_stats=False)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(21, 1, 4, 4, generator=g)
    y = torch.randint(0, 2, (21,), generator=g)
    got = client_accuracy(model, x, y, 5)
    with torch.no_grad():  # batches 5, 5, 5, 6
        spans = [(0, 5), (5, 10), (10, 15), (15, 21)]
        want = sum(int((model(x[i:j]).argmax(1) == y[i:j]).sum()) for i, j in spans)
    assert (got.n, got.correct) == (21, want)


def test_tracked_bn_accuracy_does_not_depend_on_batch_size():
    model = build_model("digit", width=0.125, norm="tracked").eval()
    x, y = _images(40)
    a = client_accuracy(model, x, y, 7)
    b = client_accuracy(model, x, y, eval_batch_size(model, 7))
    assert (a.n, a.correct) == (b.n, b.correct) == (40, a.correct)


def test_pgd_stays_in_the_eps_ball_and_the_unit_box():
    model = build_model("digit", width=0.125, norm="batch").eval()
    x, y = _images(16)
    xf = x.float() / 255
    torch.manual_seed(0)
    x_adv = adversarial_examples(model, xf, y, ADV)
    assert x_adv.shape == xf.shape
    assert (x_adv - xf).abs().max() <= ADV.eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - xf).abs().max() > ADV.eps / 2  # the attack did move the inputs


def _trained_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Label = mean pixel > 0.5: learnable with small margins, so an 8/255 ball flips some."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    model = _mlp(nn.BatchNorm1d(16))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_robust_accuracy_is_at_most_standard_accuracy():
    model, x, y = _trained_mlp()
    torch.manual_seed(0)
    res = client_accuracy(model, x, y, 64, ADV)
    assert res.acc > 0.9
    assert res.robust_acc is not None and 0.0 <= res.robust_acc < res.acc
    again = client_accuracy(model, x, y, 64, dataclasses.replace(ADV, eps=0.0, step_size=0.0))
    assert again.robust_acc == again.acc  # a zero-radius attack changes nothing


def _dual_splitmix() -> object:
    """A Split-Mix model with dual BN (0 < adv.lam < 1) whose clean and noise BNs differ."""
    info = FederationInfo(
        num_clients=2,
        budgets=assign_budgets("8-4", 2),
        weights=np.full(2, 0.5),
        num_classes=10,
        input_shape=(3, 28, 28),
        arch="digit",
    )
    cfg = RunConfig(
        dataset="digits",
        split="s",
        method="splitmix",
        algorithm="splitmix",
        bn="tracked",
        budgets="8-4",
        adv=AdvConfig(lam=0.5),
    )
    alg = get_algorithm("splitmix")(cfg, info)
    alg.init_global(torch.Generator().manual_seed(0))
    state = alg.state_dict()
    g = torch.Generator().manual_seed(1)
    for k, v in state["server"].items():
        if ".noise." in k and v.is_floating_point():
            v.add_(0.5 * torch.randn(v.shape, generator=g))
        if ".noise.running_var" in k:
            v.abs_().add_(0.1)
    alg.load_state_dict(state)
    return alg


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.float() / 255)


def test_lambda_0_and_1_evaluate_the_clean_and_the_noise_bn_models():
    alg = _dual_splitmix()
    x, y = _images(32)
    at = {lam: _logits(_assemble(alg, 0.25, lam, None), x) for lam in (0.0, 0.5, 1.0)}
    ref = alg.assemble(0.25, None, None).eval()
    for lam, mode in ((0.0, "clean"), (1.0, "noise")):
        with bn_mode(ref, mode):
            assert torch.equal(at[lam], _logits(ref, x))
    assert not torch.allclose(at[0.5], at[0.0]) and not torch.allclose(at[0.5], at[1.0])

    # accuracy and PGD accuracy at lambda=1 are those of the noise-BN model, same random start
    seed = attack_seed(1, 0.25, 1.0, 0)
    torch.manual_seed(seed)
    got = client_accuracy(_assemble(alg, 0.25, 1.0, None), x, y, 1024, ADV)
    ref = alg.assemble(0.25, None, None).eval()
    with bn_mode(ref, "noise"):
        xf = x.float() / 255
        correct = int((_logits(ref, x).argmax(1) == y).sum())
        torch.manual_seed(seed)
        x_adv = pgd(ref, xf, y, ADV)
        with torch.no_grad():
            robust = int((ref(x_adv).argmax(1) == y).sum())
    assert (got.correct, got.robust) == (correct, robust)


def test_attack_seed_is_per_width_lambda_and_client():
    seeds = {attack_seed(1, w, lam, c) for w in (0.125, 1.0) for lam in (None, 0.0) for c in (0, 1)}
    assert len(seeds) == 8
    assert attack_seed(1, 0.5, None, 3) == attack_seed(1, 0.5, None, 3)
