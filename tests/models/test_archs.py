"""Architectures and the factory: shapes, hand-computed sizes, init, determinism, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitmix.errors import ConfigError
from splitmix.models import (
    ARCHS,
    AlexNet,
    DigitModel,
    PreResNet18,
    build_model,
    count_params,
    default_arch,
)

WIDTHS = (0.125, 0.25, 0.5, 1.0)
INPUT = {"digit": 28, "alexnet": 64, "preresnet18": 32}


pytestmark = pytest.mark.usefixtures("one_thread")


def _x(arch: str, n: int = 2) -> torch.Tensor:
    s = INPUT[arch]
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes_dense_and_slimmable(arch):
    torch.manual_seed(0)
    x = _x(arch)
    slim = build_model(arch, slimmable=True, input_size=INPUT[arch])
    for w in WIDTHS:
        dense = build_model(arch, width=w, input_size=INPUT[arch])
        assert dense(x).shape == (2, 10)
        assert dense.width == w and dense.input_shape == (3, INPUT[arch], INPUT[arch])
        assert slim.set_width(w)(x).shape == (2, 10)
    assert build_model(arch, width=0.125, num_classes=7, input_size=INPUT[arch])(x).shape == (2, 7)


def test_digit_model_hand_param_count():
    # conv k5 with bias: in*out*25 + out; linear: in*out + out; BN (batch stats): weight + bias.
    conv1 = 3 * 64 * 25 + 64  # 4,864
    conv2 = 64 * 64 * 25 + 64  # 102,464
    conv3 = 64 * 128 * 25 + 128  # 204,928
    fc1 = 128 * 7 * 7 * 2048 + 2048  # 12,847,104
    fc2 = 2048 * 512 + 512  # 1,049,088
    fc3 = 512 * 10 + 10  # 5,130
    bn_channels = 64 + 64 + 128 + 2048 + 512  # 2,816
    batch_total = conv1 + conv2 + conv3 + fc1 + fc2 + fc3 + 2 * bn_channels
    assert batch_total == 14_219_210
    assert count_params(DigitModel(1.0, norm="batch")) == batch_total
    # tracked BN adds running mean and var per channel and one num_batches_tracked per layer
    assert count_params(DigitModel(1.0, norm="tracked")) == batch_total + 2 * bn_channels + 5
    # dual BN doubles every BN tensor
    dual = count_params(DigitModel(1.0, norm="dual"))
    assert dual == batch_total + 2 * bn_channels + 2 * (2 * bn_channels + 5)
    trainable = sum(p.numel() for p in DigitModel(1.0).parameters())
    assert trainable == batch_total


def test_digit_model_eighth_width_layer_shapes():
    m = DigitModel(0.125)
    assert m.conv1.weight.shape == (8, 3, 5, 5)
    assert m.conv3.weight.shape == (16, 8, 5, 5)
    assert m.fc1.weight.shape == (256, 16 * 49)
    assert m.fc2.weight.shape == (64, 256)
    assert m.fc3.weight.shape == (10, 64)


def test_alexnet_and_resnet_layer_shapes():
    a = AlexNet(0.5, input_size=64)
    assert a.features.conv1.weight.shape == (32, 3, 11, 11)
    assert a.features.conv5.weight.shape == (128, 128, 3, 3)
    assert a.classifier.fc1.weight.shape == (2048, 128 * 36)
    assert a.classifier.fc3.weight.shape == (10, 2048)
    r = PreResNet18(0.25)
    assert r.conv1.weight.shape == (16, 3, 3, 3) and r.conv1.bias is None
    assert r.layer1[0].shortcut is None and r.layer2[0].shortcut.weight.shape == (32, 16, 1, 1)
    assert r.layer2[1].shortcut is None
    assert r.linear.weight.shape == (10, 128)
    # total PreResNet-18 size at width 1: the familiar ~11.17M (batch-stat BN: no buffers)
    assert count_params(PreResNet18(1.0)) == 11_172_170


def test_resnet_init_bn_one_zero_and_linear_bias_zero():
    torch.manual_seed(0)
    for norm in ("batch", "dual"):
        r = PreResNet18(0.125, norm=norm, rescale_init=True)
        for m in r.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        assert torch.all(r.linear.bias == 0) and r.linear.weight.abs().sum() > 0


def test_determinism_under_manual_seed_and_seed_argument():
    torch.manual_seed(7)
    a = DigitModel(0.25, rescale_init=True).state_dict()
    torch.manual_seed(7)
    b = DigitModel(0.25, rescale_init=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model("preresnet18", width=0.125, seed=3).state_dict()
    d = build_model("preresnet18", width=0.125, seed=3).state_dict()
    e = build_model("preresnet18", width=0.125, seed=4).state_dict()
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert not torch.equal(c["conv1.weight"], e["conv1.weight"])
    # seeding a build leaves the caller's RNG stream where it was
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    build_model("digit", width=0.125, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_training_step_is_deterministic():
    def run() -> torch.Tensor:
        model = build_model("digit", width=0.125, rescale_init=True, rescale_layer=True, seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = _x("digit", n=8), torch.arange(8) % 10
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model.fc3.weight.detach().clone()

    assert torch.equal(run(), run())


def test_default_arch_and_factory_errors():
    assert default_arch("digits") == "digit" and default_arch("digits-mini") == "digit"
    assert default_arch("cifar10") == default_arch("cifar10-mini") == "preresnet18"
    assert default_arch("domainnet") == "alexnet"
    with pytest.raises(ConfigError, match="no default model for dataset 'imagenet'"):
        default_arch("imagenet")
    with pytest.raises(ConfigError) as err:
        build_model("vgg16")
    msg = str(err.value)
    assert "\n" not in msg and "unknown arch 'vgg16'" in msg
    assert "digit, alexnet, preresnet18" in msg
    with pytest.raises(ConfigError, match="28x28"):
        build_model("digit", input_size=32)
    with pytest.raises(ConfigError, match="at least 63"):
        build_model("alexnet", input_size=32)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_model("digit", norm="instance")
    with pytest.raises(ConfigError, match="width 0 must be > 0"):
        build_model("digit", width=0)
    with pytest.raises(ConfigError, match="leaves 0 of 64 channels"):
        build_model("digit", width=0.01)
