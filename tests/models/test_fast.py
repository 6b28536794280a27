"""Inference speed-ups keep the mathematics: fused ensembles and channels-last equal the assembled
model (outputs, input gradients, accuracies), PGD draws the same random start through them, and
the algorithm's own tensors are left untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitmix.allocator import keep_freed_memory
from splitmix.config import AdvConfig
from splitmix.evaluate.accuracy import client_accuracy, eval_batch_size
from splitmix.fl.adversarial import pgd
from splitmix.models import build_model, set_bn_mode
from splitmix.models.fast import ChannelsLast
from splitmix.splitmix.ensemble import Ensemble
from splitmix.splitmix.inference import FusedEnsemble
from splitmix.splitmix.inference import ensemble_inference_model as inference_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _ensemble(k: int, norm: str, seed: int = 0) -> Ensemble:
    torch.manual_seed(seed)
    bases = nn.ModuleList(build_model("digit", width=0.125, norm=norm) for _ in range(k))
    if norm in ("tracked", "dual"):  # non-trivial running statistics
        with torch.no_grad():
            for m in bases.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    return Ensemble(bases, atom=0.125).eval()


def _batch(n: int = 20, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _logits_and_input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    xa = x.clone().requires_grad_(True)
    out = model(xa)
    (grad,) = torch.autograd.grad(F.cross_entropy(out, y), xa)
    return out.detach(), grad


def _assert_same(got_out, got_grad, want_out, want_grad) -> None:
    """Equal up to float32 rounding. ``want_*`` come from the plain model in float64: with batch
    statistics the input gradient passes through BN's mean/variance and can lose ~3 digits in
    float32, in the plain model as in the fast one (each measured up to ~3e-3 off float64)."""
    torch.testing.assert_close(got_out, want_out.float(), rtol=1e-4, atol=1e-5)
    assert (got_grad - want_grad.float()).norm() <= 1e-2 * want_grad.norm()
    assert (got_grad.sign() != want_grad.sign()).float().mean() < 1e-3


def _float64_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    import copy

    return _logits_and_input_grad(copy.deepcopy(model).double(), x.double(), y)


@pytest.mark.parametrize("norm", ["batch", "tracked", "dual"])
def test_fused_ensemble_equals_the_ensemble_in_logits_and_input_gradient(norm):
    ens = _ensemble(4, norm)
    if norm == "dual":
        set_bn_mode(ens, 0.5)  # the deep lambda-mix must survive fusion
    x, y = _batch()
    fast = inference_model(ens)
    assert isinstance(fast, FusedEnsemble)
    _assert_same(*_logits_and_input_grad(fast, x, y), *_float64_reference(ens, x, y))


def test_single_models_run_channels_last_without_touching_the_original():
    model = build_model("digit", width=0.25, norm="batch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    fast = inference_model(model)
    assert isinstance(fast, ChannelsLast)
    conv = fast.model.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _assert_same(*_logits_and_input_grad(fast, x, y), *_float64_reference(model, x, y))
    for key, value in model.state_dict().items():  # same values, same (NCHW) layout
        assert value.is_contiguous() and torch.equal(value, before[key])


@pytest.mark.parametrize("norm", ["batch", "tracked", "dual"])
def test_the_fast_model_keeps_the_batch_semantics_and_is_built_once(norm):
    """run.py sizes batches from the fast model it hands to every client."""
    for model in (_ensemble(3, norm), build_model("digit", width=0.5, norm=norm).eval()):
        fast = inference_model(model)
        assert eval_batch_size(fast, 128) == eval_batch_size(model, 128)
        assert inference_model(fast) is fast  # no second copy
    slim = build_model("digit", slimmable=True, norm="batch").eval()  # HeteroFL's sliced BN
    assert eval_batch_size(inference_model(slim), 128) == 128


def test_bases_mixed_differently_and_training_models_are_not_fused():
    ens = _ensemble(2, "dual")
    set_bn_mode(ens.bases[0], 0.0)
    set_bn_mode(ens.bases[1], 1.0)  # a fused copy would take base 0's mixing for both
    x, y = _batch()
    fast = inference_model(ens)
    assert isinstance(fast, ChannelsLast)
    torch.testing.assert_close(fast(x), ens(x), rtol=1e-4, atol=1e-5)
    assert inference_model(ens.train()) is ens  # BN would update a copy's statistics


def test_pgd_through_the_fast_model_starts_from_the_same_random_point():
    """torchattacks fills its random start in memory order: it must see NCHW tensors."""
    ens = _ensemble(3, "batch")
    x, y = _batch()
    frozen = AdvConfig(eps=8 / 255, steps=1, step_size=0.0)  # x_adv = clip(x + random start)
    torch.manual_seed(5)
    want = pgd(ens, x, y, frozen)
    torch.manual_seed(5)
    got = pgd(inference_model(ens), x, y, frozen)
    assert torch.equal(got, want) and not torch.equal(got, x)


def test_client_accuracy_matches_a_plain_ensemble_loop():
    ens = _ensemble(4, "batch")
    x_u8 = (torch.rand(70, 3, 28, 28, generator=torch.Generator().manual_seed(2)) * 255).to(
        torch.uint8
    )
    y = ens(x_u8[:32].float() / 255).argmax(1)
    y = torch.cat([y, ens(x_u8[32:64].float() / 255).argmax(1), torch.zeros(6, dtype=torch.long)])
    with torch.no_grad():  # the paper's loader: batches of 32 in order, last one short
        want = sum(
            int((ens(x_u8[s : s + 32].float() / 255).argmax(1) == y[s : s + 32]).sum())
            for s in range(0, 70, 32)
        )
    res = client_accuracy(ens, x_u8, y, 32)
    assert res.n == 70 and res.correct == want


def test_robust_accuracy_through_the_fast_path_equals_pgd_on_the_plain_ensemble():
    ens = _ensemble(3, "batch")
    x = torch.rand(40, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    x_u8 = (x * 255).to(torch.uint8)
    x = x_u8.float() / 255
    with torch.no_grad():
        y = ens(x).argmax(1)  # every clean prediction right
    adv = AdvConfig(eps=0.5 / 255)  # weak enough that some predictions survive
    torch.manual_seed(0)
    res = client_accuracy(ens, x_u8, y, 1024, adv)  # fused + channels-last
    torch.manual_seed(0)
    x_adv = pgd(ens, x, y, adv)  # the assembled ensemble, NCHW
    with torch.no_grad():
        want = int((ens(x_adv).argmax(1) == y).sum())
    assert res.correct == 40 and 0 < want < 40 and res.robust == want
    assert (x_adv - x).abs().max() <= adv.eps + 1e-6 and 0 <= x_adv.min() <= x_adv.max() <= 1


def test_the_pgd_step_follows_the_original_rule():
    assert AdvConfig().step_size == pytest.approx((10 / 255) / 7, rel=1e-12)
    assert AdvConfig(steps=3).step_size == pytest.approx((10 / 255) / 3, rel=1e-12)
    assert AdvConfig(eps=16 / 255, steps=10).step_size == pytest.approx((20 / 255) / 10)
    assert AdvConfig(eps=2 / 255, steps=1).step_size == pytest.approx(2.5 / 255)  # 1.25 eps
    assert AdvConfig(steps=3, step_size=0.01).step_size == 0.01  # given: kept


def test_allocator_tuning_takes_effect_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    assert keep_freed_memory() is True
