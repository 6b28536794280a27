"""Fused bases (``splitmix.fl.fused``): one batched forward/backward equals the sequential loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitmix.config import run_config_from_dict
from splitmix.errors import ConfigError
from splitmix.fl.algorithm import FederationInfo, Task
from splitmix.models import build_model
from splitmix.splitmix import SplitMix
from splitmix.splitmix.fused import FusedBases, FusedLinear, check_fusable

TOL = {"rtol": 1e-5, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")


def _bases(k: int, norm: str, seed: int = 0) -> list[nn.Module]:
    return [
        build_model(
            "digit", width=0.125, norm=norm, rescale_init=True, rescale_layer=True, seed=seed + i
        )
        for i in range(k)
    ]


def _batch(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _base_grad(fused: FusedBases, name: str, j: int) -> torch.Tensor:
    """Base ``j``'s gradient of parameter ``name``, read from the stacked fused tensor."""
    layer, attr = name.rsplit(".", 1)
    mod = fused.net.get_submodule(layer)
    grad = getattr(mod, attr).grad
    if isinstance(mod, FusedLinear):
        return grad[j]  # stacked on a new leading dim
    return grad.chunk(fused.k)[j]  # conv / BN: concatenated along the channel dim


@pytest.mark.parametrize("norm", ["batch", "tracked"])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_fused_logits_and_sgd_steps_match_sequential(k, norm):
    bases = _bases(k, norm)
    ref = copy.deepcopy(bases)
    fused = FusedBases(bases).train()
    for m in ref:
        m.train()
    opt_f = torch.optim.SGD(fused.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    opt_s = torch.optim.SGD(
        [p for m in ref for p in m.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    for step in range(2):  # the second step exercises the momentum buffers
        x, y = _batch(seed=step)
        opt_f.zero_grad()
        opt_s.zero_grad()
        out = fused(x)
        assert out.shape == (12, k, 10)
        sum(F.cross_entropy(out[:, j], y) for j in range(k)).backward()
        for j, m in enumerate(ref):
            logits = m(x)
            torch.testing.assert_close(out[:, j], logits, **TOL)
            F.cross_entropy(logits, y).backward()
        # gradients of each base, read from the stacked tensors
        for j, m in enumerate(ref):
            for name, p in m.named_parameters():
                torch.testing.assert_close(_base_grad(fused, name, j), p.grad, **TOL)
        opt_f.step()
        opt_s.step()
        fused.write_back(bases)
        for b, m in zip(bases, ref, strict=True):
            for (kb, vb), (km, vm) in zip(
                b.state_dict().items(), m.state_dict().items(), strict=True
            ):
                assert kb == km
                torch.testing.assert_close(vb, vm, **TOL, msg=kb)
        # Start the next step from bitwise-equal weights: ~1e-7 rounding differences can move an
        # activation across a ReLU/max-pool kink and change a later gradient by far more than
        # 1e-5 (a property of the loss, not of either implementation). Momentum buffers are kept.
        fused.write_back(ref)
    if norm == "tracked":
        assert int(bases[0].bn1.num_batches_tracked) == 2


def test_write_back_is_idempotent_and_adds_fused_counts_to_each_base():
    bases = _bases(2, "tracked")
    with torch.no_grad():
        bases[1].bn1.num_batches_tracked.fill_(5)
    fused = FusedBases(bases).train()
    fused(_batch()[0])
    fused.write_back(bases)
    fused.write_back(bases)
    assert [int(b.bn1.num_batches_tracked) for b in bases] == [1, 6]


def test_shared_and_per_base_inputs_agree():
    """A fused conv/linear fed the shared input equals one fed the input repeated per base."""
    bases = _bases(3, "batch")
    fused = FusedBases(bases)
    conv = fused.net.conv1
    x = torch.rand(2, 3, 28, 28)
    torch.testing.assert_close(conv(x), conv(x.repeat(1, 3, 1, 1)), **TOL)
    lin = FusedLinear([nn.Linear(5, 4) for _ in range(3)])
    v = torch.randn(6, 5)
    torch.testing.assert_close(lin(v), lin(v.repeat(1, 3)), **TOL)
    with pytest.raises(ValueError, match="input channels"):
        conv(torch.rand(2, 4, 28, 28))


def test_unsupported_layers_are_refused():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    with pytest.raises(ValueError, match="cannot fuse"):
        FusedBases([nn.Sequential(Odd(), nn.Flatten()) for _ in range(2)])


def test_check_fusable():
    check_fusable("digit", 0.0)
    with pytest.raises(ConfigError, match="supports arch digit"):
        check_fusable("preresnet18", 0.0)
    with pytest.raises(ConfigError, match="adversarial"):
        check_fusable("digit", 0.5)


def _alg(fused: bool, bn: str) -> SplitMix:
    cfg = run_config_from_dict(
        {
            "dataset": "digits",
            "split": "t",
            "method": "splitmix",
            "algorithm": "splitmix",
            "arch": "digit",
            "bn": bn,
            "method_params": {"fused": fused},
        }
    )
    info = FederationInfo(
        num_clients=2,
        budgets=np.array([0.5, 1.0]),
        weights=np.array([0.5, 0.5]),
        num_classes=10,
        input_shape=(3, 28, 28),
        arch="digit",
    )
    alg = SplitMix(cfg, info)
    alg.init_global(torch.Generator().manual_seed(0))
    return alg


@pytest.mark.parametrize("bn", ["batch", "local"])
def test_fused_algorithm_uploads_what_the_sequential_one_does(bn):
    task = Task(client=0, bases=(6, 1, 3, 4))
    ups = []
    for fused in (False, True):
        alg = _alg(fused, bn)
        model = alg.download(task)
        assert isinstance(model, FusedBases) == fused
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        losses = []
        for s in range(1):  # one step: later steps may diverge at a ReLU kink (see above)
            x, y = _batch(seed=s)
            opt.zero_grad()
            losses.append(alg.train_step(model, task, x, y, F.cross_entropy))
            opt.step()
        ups.append((alg.upload(task, model), losses, alg))
    (seq, ls, a_seq), (fus, lf, a_fus) = ups
    assert ls == pytest.approx(lf, rel=1e-5)
    assert set(seq.tensors) == set(fus.tensors) and seq.tensors
    for key in seq.tensors:
        torch.testing.assert_close(fus.tensors[key], seq.tensors[key], **TOL, msg=key)
    if bn == "local":
        assert set(a_seq.local[0]) == set(a_fus.local[0])
        for key, v in a_seq.local[0].items():
            torch.testing.assert_close(a_fus.local[0][key], v, **TOL, msg=key)


def test_fused_needs_digit_arch():
    cfg = run_config_from_dict(
        {
            "dataset": "cifar10",
            "split": "t",
            "method": "splitmix",
            "algorithm": "splitmix",
            "arch": "preresnet18",
            "method_params": {"fused": True},
        }
    )
    info = FederationInfo(1, np.array([1.0]), np.array([1.0]), 10, (3, 32, 32), "preresnet18")
    with pytest.raises(ConfigError, match="fused=true supports arch digit"):
        SplitMix(cfg, info)
