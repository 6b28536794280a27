"""PGD helper and the adversarial-training loss (docs/paper.md#adversarial)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitmix.config import AdvConfig
from splitmix.fl.adversarial import adversarial_loss, pgd
from splitmix.models import DualBatchNorm

ADV = AdvConfig()  # eps 8/255, 7 steps of (10/255)/7


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Label = whether the mean pixel exceeds 0.5: learnable, with small margins."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    return x, y


def _trained_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model


@pytest.fixture
def trained() -> nn.Module:
    return _trained_model()


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_stays_in_eps_ball_and_image_range(trained: nn.Module) -> None:
    x, y = _data()
    torch.manual_seed(1)
    adv = dataclasses.replace(ADV, eps=0.1, step_size=0.03)
    x_adv = pgd(trained, x, y, adv)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= adv.eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv - x).abs().max().item() > adv.eps / 2  # it did move


def test_pgd_lowers_accuracy(trained: nn.Module) -> None:
    x, y = _data()
    clean = _acc(trained, x, y)
    torch.manual_seed(1)
    x_adv = pgd(trained, x, y, ADV)
    torch.manual_seed(1)
    x_big = pgd(trained, x, y, dataclasses.replace(ADV, eps=0.1, step_size=0.03))
    assert clean > 0.9
    # a mean shift of 8/255 flips the samples within ~0.03 of the boundary; 0.1 flips most
    assert _acc(trained, x_adv, y) < clean - 0.1
    assert _acc(trained, x_big, y) < 0.3


@pytest.mark.parametrize("training", [True, False])
def test_pgd_restores_mode_and_leaves_no_grads(trained: nn.Module, training: bool) -> None:
    x, y = _data(32)
    trained.train(training)
    trained[2].eval()  # a submodule frozen by the caller stays frozen
    frozen_param = trained[4].bias
    frozen_param.requires_grad_(False)
    stats = trained[2].running_mean.clone()
    pgd(trained, x, y, ADV)
    assert trained.training is training
    assert trained[1].training is training
    assert trained[2].training is False
    assert frozen_param.requires_grad is False
    assert all(p.requires_grad for p in trained[1].parameters())
    assert all(p.grad is None for p in trained.parameters())
    assert torch.equal(trained[2].running_mean, stats)  # eval mode: no BN statistics update
    frozen_param.requires_grad_(True)


def _linear() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_loss_terms_match_definition() -> None:
    x, y = _data(64)
    model = _linear()
    # lam = 0: plain CE, no attack (no RNG drawn)
    torch.manual_seed(5)
    l0 = adversarial_loss(model, x, y, ADV, F.cross_entropy, lam=0.0)
    r0 = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(1), r0)
    assert torch.allclose(l0, F.cross_entropy(model(x), y))
    # lam = 1 without dual BN: only the adversarial term
    torch.manual_seed(5)
    l1 = adversarial_loss(model, x, y, ADV, F.cross_entropy, lam=1.0)
    torch.manual_seed(5)
    x_adv = pgd(model, x, y, ADV)
    ce_adv = F.cross_entropy(model(x_adv), y)
    assert torch.allclose(l1, ce_adv)
    assert l1.item() > l0.item()
    # lam = 0.3: the convex combination
    torch.manual_seed(5)
    lm = adversarial_loss(model, x, y, dataclasses.replace(ADV, lam=0.3), F.cross_entropy)
    assert torch.allclose(lm, 0.7 * l0 + 0.3 * ce_adv)


class _DualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 8)
        self.bn = DualBatchNorm(8, dims=1, tracked=True)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.bn(self.fc1(x.flatten(1)))))


def test_dual_bn_attack_uses_noise_path_and_both_branches_learn() -> None:
    torch.manual_seed(0)
    model = _DualNet().train()
    seen: list[tuple[object, bool]] = []
    model.bn.register_forward_hook(lambda m, i, o: seen.append((m.mode, m.training)))
    x, y = _data(32)
    loss = adversarial_loss(model, x, y, ADV, F.cross_entropy, lam=0.5)
    loss.backward()
    attack_calls = [mode for mode, training in seen if not training]
    train_calls = [mode for mode, training in seen if training]
    assert len(attack_calls) == ADV.steps and set(attack_calls) == {"noise"}
    assert train_calls == ["clean", "noise"]
    assert model.bn.mode == "clean"  # restored
    assert model.bn.clean.weight.grad.abs().sum() > 0
    assert model.bn.noise.weight.grad.abs().sum() > 0
