"""Scaler, Split-Mix rescaled init and width arithmetic (docs/paper.md#digitmodel, #rescaling,
#heterofl)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models import (
    AlexNet,
    DigitModel,
    PreResNet18,
    Scaler,
    scaled_channels,
    set_scalers,
    slim_channels,
)
from splitmix.models.layers import rescale_init_bound

PAPER_CHANNELS = (64, 128, 192, 256, 384, 512, 2048, 4096)
PAPER_WIDTHS = (0.125, 0.25, 0.5, 1.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tests check maths, and 2 OpenMP threads on a shared 2-core
    machine spin against other processes and run 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_scaler_divides_by_width_in_training_only():
    s = Scaler(0.125)
    x = torch.randn(4, 5)
    s.train()
    assert torch.equal(s(x), x * 8)
    s.eval()
    assert torch.equal(s(x), x)
    s.train()
    assert set_scalers(s, active=False) == 1
    assert torch.equal(s(x), x)


def test_linear_then_scaler_train_output_is_eval_output_over_width():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3), Scaler(0.25))
    x = torch.randn(5, 6)
    m.train()
    train = m(x)
    m.eval()
    evald = m(x)
    torch.testing.assert_close(train, evald / 0.25, rtol=0, atol=0)


def _first_scaler_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
        for m in model.modules()
        if isinstance(m, Scaler)
    ]
    logits = model(x)
    for h in handles:
        h.remove()
    seen.append(logits.detach())
    return seen


def test_digit_model_scaler_active_only_in_training_with_batch_bn():
    torch.manual_seed(0)
    model = DigitModel(width=0.125, norm="batch", rescale_layer=True)
    x = torch.rand(8, 3, 28, 28)
    model.train()
    train = _first_scaler_outputs(model, x)
    model.eval()
    evald = _first_scaler_outputs(model, x)
    # 5 scaled layers: conv1, conv2, conv3, fc1, fc2 (not the classifier).
    assert len(train) == len(evald) == 6
    # conv1 sees the same input in both modes, so its scaled output differs by exactly x8.
    torch.testing.assert_close(train[0], evald[0] * 8)
    # Batch-statistics BN absorbs the scale: logits nearly agree (only BN's eps differs).
    torch.testing.assert_close(train[-1], evald[-1], rtol=1e-3, atol=1e-3)
    assert not torch.equal(train[-1], evald[-1])


def test_batch_bn_model_without_scaler_is_identical_in_train_and_eval():
    torch.manual_seed(0)
    model = DigitModel(width=0.25, norm="batch")
    x = torch.rand(8, 3, 28, 28)
    model.train()
    a = model(x)
    model.eval()
    b = model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _count_scaler_calls(model: nn.Module, x: torch.Tensor) -> int:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Scaler)]
    model(x)
    for h in handles:
        h.remove()
    return calls[0]


def test_scaler_placements_match_reference():
    torch.manual_seed(0)
    assert _count_scaler_calls(DigitModel(0.125, rescale_layer=True), torch.rand(2, 3, 28, 28)) == 5
    alex = AlexNet(0.125, rescale_layer=True, input_size=64)
    assert _count_scaler_calls(alex, torch.rand(2, 3, 64, 64)) == 7  # 5 convs, fc1, fc2
    res = PreResNet18(0.125, rescale_layer=True)
    # stem 1 + 8 blocks x 2 convs + 3 shortcut convs (first block of stages 2-4)
    assert _count_scaler_calls(res, torch.rand(2, 3, 32, 32)) == 1 + 16 + 3
    assert _count_scaler_calls(DigitModel(0.125), torch.rand(2, 3, 28, 28)) == 0


def _convs_and_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_rescale_init_bound_hand_values():
    # DigitModel x1/8 conv2: 8 in-channels x 5x5 -> fan_in 200, full-width fan_in 1600,
    # bound = sqrt(2/6) * sqrt(3) / sqrt(1600) = 1/40.
    model = DigitModel(width=0.125, rescale_init=True)
    assert rescale_init_bound(model.conv2, 0.125) == pytest.approx(1 / 40)
    # fc3: 64 inputs -> full-width fan_in 512 -> bound 1/sqrt(512)
    assert rescale_init_bound(model.fc3, 0.125) == pytest.approx(1 / math.sqrt(512))


@pytest.mark.parametrize("arch", ["digit", "alexnet", "preresnet18"])
def test_rescale_init_bounds_and_empirical_max(arch):
    torch.manual_seed(1)
    w = 0.125
    if arch == "digit":
        model, first = DigitModel(w, rescale_init=True), "conv1"
    elif arch == "alexnet":
        model, first = AlexNet(w, rescale_init=True, input_size=64), "features.conv1"
    else:
        model, first = PreResNet18(w, rescale_init=True), "conv1"
    for name, m in _convs_and_linears(model):
        fan_in = m.weight[0].numel()
        rescaled = 1 / math.sqrt(fan_in / w)
        default = 1 / math.sqrt(fan_in)  # torch's kaiming_uniform(a=sqrt(5)) bound
        wmax = m.weight.abs().max().item()
        if name == first:
            # the input layer keeps torch's default init, wider than the rescaled one
            assert rescaled < wmax <= default
            continue
        assert wmax <= rescaled + 1e-7, name
        assert wmax >= 0.95 * rescaled, name  # >= 600 uniform draws reach close to the bound
        if m.bias is not None:
            bmax = m.bias.abs().max().item()
            assert bmax <= rescaled + 1e-7, name
            if arch == "preresnet18":
                assert bmax == 0.0  # ResNet's linear bias is zeroed after rescale_init


def test_rescale_init_is_off_at_full_width_and_by_default():
    torch.manual_seed(2)
    a = DigitModel(1.0, rescale_init=True)
    torch.manual_seed(2)
    b = DigitModel(1.0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    # default init at width 1/8: conv2 bound 1/sqrt(200) > rescaled 1/40
    torch.manual_seed(3)
    plain = DigitModel(0.125)
    assert plain.conv2.weight.abs().max().item() > 1 / 40


def test_paper_widths_int_and_ceil_agree():
    for c in PAPER_CHANNELS:
        for w in PAPER_WIDTHS:
            assert scaled_channels(c, w) == slim_channels(c, w) == c * w


def test_width_arithmetic_is_robust_to_float_noise_and_rejects_empty_layers():
    assert 0.29 * 100 < 29  # the float noise the epsilon guards against
    assert scaled_channels(100, 0.29) == 29
    assert slim_channels(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004, ceil would give 4
    assert scaled_channels(64, 0.3) == 19  # int() truncates, as the original
    assert slim_channels(64, 0.3) == 20  # ceil rounds up, as the original
    with pytest.raises(ConfigError, match="leaves 0 of 64 channels"):
        scaled_channels(64, 0.01)
