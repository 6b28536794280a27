"""BN regimes, dual BN routing and mixing, and type-based local-state selection
(docs/paper.md#batch-norm, #dual-bn; docs/fidelity.md#local-bn)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models import (
    DigitModel,
    DualBatchNorm,
    PreResNet18,
    SlimmableDigitModel,
    bn_mode,
    local_state_keys,
    make_norm,
    norm_kind,
    set_bn_mode,
)
from splitmix.splitmix import build_ensemble

BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tests check maths, and 2 OpenMP threads on a shared 2-core
    machine spin against other processes and run 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_norms(model: nn.Module, seed: int) -> None:
    """Give every BN distinct affine params and running stats so branches are distinguishable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
                if m.running_mean is not None:
                    m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


def test_make_norm_kinds():
    b = make_norm("batch", 8, 2)
    assert isinstance(b, nn.BatchNorm2d) and not b.track_running_stats and b.running_mean is None
    for kind in ("tracked", "local"):
        t = make_norm(kind, 8, 1)
        assert isinstance(t, nn.BatchNorm1d) and t.track_running_stats and t.momentum == 0.1
    d = make_norm("dual", 8, 2)
    assert isinstance(d, DualBatchNorm) and d.clean.track_running_stats
    assert d.noise.track_running_stats and d.clean.weight is not d.noise.weight
    db = make_norm("dual-batch", 8, 2)
    assert not db.clean.track_running_stats and not db.noise.track_running_stats
    assert norm_kind("local", dual=True) == "dual-local" and norm_kind("batch", False) == "batch"
    with pytest.raises(ConfigError, match="unknown norm 'group'; known: batch, tracked"):
        make_norm("group", 8, 2)


def test_batch_norm_uses_batch_statistics_in_eval():
    bn = make_norm("batch", 4, 2)
    x = 3 + 2 * torch.randn(16, 4, 5, 5)
    bn.eval()
    y = bn(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["dual-tracked", "dual-batch"])
def test_dual_layer_mixing_at_single_layer(kind):
    torch.manual_seed(0)
    layer = make_norm(kind, 6, 2)
    _randomize_norms(layer, 1)
    layer.eval()
    x = torch.randn(10, 6, 3, 3)
    clean, noise = layer.clean(x), layer.noise(x)
    assert not torch.allclose(clean, noise)
    layer.mode = 0.0
    assert torch.equal(layer(x), clean)
    layer.mode = 1.0
    assert torch.equal(layer(x), noise)
    layer.mode = 0.5
    torch.testing.assert_close(layer(x), (clean + noise) / 2)
    layer.mode = 0.2
    torch.testing.assert_close(layer(x), 0.8 * clean + 0.2 * noise)
    layer.train()
    with pytest.raises(RuntimeError, match="eval only"):
        layer(x)


def _single_bn_state(dual_state: dict[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in dual_state.items():
        if f".{branch}." in k:
            out[k.replace(f".{branch}.", ".")] = v
        elif ".clean." not in k and ".noise." not in k:
            out[k] = v
    return out


def test_dual_model_lambda_endpoints_equal_single_bn_models():
    torch.manual_seed(0)
    dual = DigitModel(width=0.25, norm="dual")
    _randomize_norms(dual, 2)
    dual.eval()
    x = torch.rand(6, 3, 28, 28)
    outs = {}
    for branch in ("clean", "noise"):
        single = DigitModel(width=0.25, norm="tracked")
        single.load_state_dict(_single_bn_state(dual.state_dict(), branch), strict=True)
        single.eval()
        outs[branch] = single(x)
    assert set_bn_mode(dual, 0.0) == 5
    torch.testing.assert_close(dual(x), outs["clean"], rtol=0, atol=1e-6)
    set_bn_mode(dual, 1.0)
    torch.testing.assert_close(dual(x), outs["noise"], rtol=0, atol=1e-6)
    set_bn_mode(dual, "clean")
    torch.testing.assert_close(dual(x), outs["clean"], rtol=0, atol=1e-6)
    set_bn_mode(dual, 0.5)  # deep mix: not the average of the two endpoint logits
    mid = dual(x)
    assert not torch.allclose(mid, (outs["clean"] + outs["noise"]) / 2, atol=1e-4)


def test_clean_and_noise_routing_keep_separate_running_stats():
    layer = make_norm("dual", 3, 1)
    a = torch.randn(32, 3) + 5.0
    b = torch.randn(32, 3) - 7.0
    layer.train()
    set_bn_mode(layer, "clean")
    layer(a)
    torch.testing.assert_close(layer.clean.running_mean, 0.1 * a.mean(0))
    assert torch.equal(layer.noise.running_mean, torch.zeros(3))
    assert (layer.clean.num_batches_tracked.item(), layer.noise.num_batches_tracked.item()) == (
        1,
        0,
    )
    set_bn_mode(layer, "noise")
    layer(b)
    torch.testing.assert_close(layer.noise.running_mean, 0.1 * b.mean(0))
    torch.testing.assert_close(layer.clean.running_mean, 0.1 * a.mean(0))
    assert layer.noise.num_batches_tracked.item() == 1


def test_bn_mode_context_restores_previous_mode_and_validates():
    model = DigitModel(width=0.125, norm="dual-batch")
    set_bn_mode(model, "noise")
    with bn_mode(model, 0.3):
        assert all(m.mode == 0.3 for m in model.modules() if isinstance(m, DualBatchNorm))
    assert all(m.mode == "noise" for m in model.modules() if isinstance(m, DualBatchNorm))
    with pytest.raises(ValueError), bn_mode(model, "clean"):
        raise ValueError
    assert all(m.mode == "noise" for m in model.modules() if isinstance(m, DualBatchNorm))
    for bad in ("dirty", 1.5, -0.1, True):
        with pytest.raises(ConfigError, match="BN mode"):
            set_bn_mode(model, bad)
    assert set_bn_mode(DigitModel(width=0.125), "noise") == 0  # no dual layers: no-op


def _expected_keys(names: list[str], tensors: tuple[str, ...]) -> set[str]:
    return {f"{n}.{t}" for n in names for t in tensors}


DIGIT_BNS = ["bn1", "bn2", "bn3", "bn4", "bn5"]


def test_local_state_keys_plain_dual_and_slimmable():
    tracked = DigitModel(width=0.125, norm="local")
    assert local_state_keys(tracked) == _expected_keys(DIGIT_BNS, BN_TENSORS)
    batch = DigitModel(width=0.125, norm="batch")
    assert local_state_keys(batch) == _expected_keys(DIGIT_BNS, ("weight", "bias"))
    dual = DigitModel(width=0.125, norm="dual")
    branches = [f"{n}.{b}" for n in DIGIT_BNS for b in ("clean", "noise")]
    assert local_state_keys(dual) == _expected_keys(branches, BN_TENSORS)
    slim = SlimmableDigitModel(norm="batch")
    assert local_state_keys(slim) == _expected_keys(DIGIT_BNS, ("weight", "bias"))
    slim_t = SlimmableDigitModel(norm="tracked", widths=(0.25, 1.0))
    per_width = [f"{n}.norms.{i}" for n in DIGIT_BNS for i in (0, 1)]
    assert local_state_keys(slim_t) == _expected_keys(per_width, BN_TENSORS)
    # every key is a real state key, and non-norm keys are never selected
    for model in (tracked, dual, slim_t):
        keys = local_state_keys(model)
        assert keys <= set(model.state_dict())
        assert not any(k.startswith(("conv", "fc")) for k in keys)


def test_local_state_keys_cover_resnet_and_ensemble_norms():
    res = PreResNet18(width=0.125, norm="tracked")
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in res.modules())
    assert n_norms == 8 * 2 + 1
    keys = local_state_keys(res)
    assert len(keys) == 5 * n_norms
    assert "layer3.0.bn2.running_var" in keys and "bn4.num_batches_tracked" in keys
    ens = build_ensemble("digit", atom=0.25, norm="tracked")
    keys = local_state_keys(ens)
    assert keys == {
        f"bases.{i}.{k}" for i in range(4) for k in _expected_keys(DIGIT_BNS, BN_TENSORS)
    }


def test_local_state_keys_select_by_type_not_by_name():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_proj = nn.Linear(4, 4)  # 'bn' in the name, not a norm layer
            self.n1 = nn.BatchNorm1d(4)  # a norm layer without 'bn' in the name
            self.dbn = DualBatchNorm(4, 1, tracked=False)

    keys = local_state_keys(Tiny())
    assert keys == _expected_keys(["n1"], BN_TENSORS) | _expected_keys(
        ["dbn.clean", "dbn.noise"], ("weight", "bias")
    )
