"""MACs, FLOPs, parameters and bytes of assembled models against hand-computed layer arithmetic."""

from __future__ import annotations

import pytest

from splitmix.evaluate.cost import count_flops, model_cost
from splitmix.models import build_model
from splitmix.splitmix import build_ensemble

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_macs(cin: int, cout: int, k: int, hout: int) -> int:
    """MACs of a k x k convolution with a square output: Cout * Hout * Wout * Cin * k * k."""
    return cout * hout * hout * cin * k * k


def digit_macs(w: float) -> int:
    """docs/paper.md#digitmodel: three 5x5 convs (28x28, then 14x14 and 7x7 after 2x2 pools), three
    FCs."""
    c1, c2, c3, f1, f2 = (int(w * c) for c in (64, 64, 128, 2048, 512))
    convs = conv_macs(3, c1, 5, 28) + conv_macs(c1, c2, 5, 14) + conv_macs(c2, c3, 5, 7)
    fcs = c3 * 7 * 7 * f1 + f1 * f2 + f2 * 10
    return convs + fcs


def digit_params(w: float) -> tuple[int, list[int]]:
    """Parameter count (conv/linear weights and biases, BN affine) and the BN channel counts."""
    c1, c2, c3, f1, f2 = (int(w * c) for c in (64, 64, 128, 2048, 512))
    layers = [(3 * 25, c1), (c1 * 25, c2), (c2 * 25, c3), (c3 * 49, f1), (f1, f2), (f2, 10)]
    weights = sum(i * o + o for i, o in layers)
    bns = [c1, c2, c3, f1, f2]
    return weights + sum(2 * c for c in bns), bns


def preresnet_macs(w: float) -> int:
    """docs/paper.md#preresnet-18 on 32x32: stem 3x3 conv; per stage two blocks of two 3x3 convs,
    the first block of stages 2-4 with stride 2 and a 1x1 shortcut conv; linear 512w -> 10."""
    hidden = [int(w * h) for h in (64, 128, 256, 512)]
    total = conv_macs(3, hidden[0], 3, 32)
    cin, size = hidden[0], 32
    for stage, h in enumerate(hidden):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            size //= stride
            total += conv_macs(cin, h, 3, size) + conv_macs(h, h, 3, size)
            if stride != 1 or cin != h:
                total += conv_macs(cin, h, 1, size)
            cin = h
    return total + cin * 10


def test_digit_model_width1_macs_flops_params_by_hand():
    model = build_model("digit", width=1.0, norm="batch")
    cost = model_cost(model, (3, 28, 28))
    assert digit_macs(1.0) == 47_767_552  # the arithmetic itself, spelled out once
    assert cost.macs == digit_macs(1.0)
    assert cost.flops == 2 * digit_macs(1.0)
    params, _ = digit_params(1.0)
    assert cost.params == params
    assert cost.state_numel == params  # batch-statistics BN has no buffers
    assert cost.model_bytes == 4 * params


def test_tracked_bn_buffers_count_in_state_and_bytes_not_params():
    model = build_model("digit", width=0.25, norm="tracked")
    cost = model_cost(model, (3, 28, 28))
    params, bns = digit_params(0.25)
    assert cost.params == params
    # running_mean + running_var (C each, float32) + num_batches_tracked (1, int64) per BN
    assert cost.state_numel == params + sum(2 * c + 1 for c in bns)
    assert cost.model_bytes == 4 * (params + sum(2 * c for c in bns)) + 8 * len(bns)


def test_preresnet18_width1_macs_by_hand():
    model = build_model("preresnet18", width=1.0, norm="batch")
    flops = count_flops(model, (3, 32, 32))
    assert flops / 2 == preresnet_macs(1.0) == 555_422_720


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_narrow_models_follow_the_same_arithmetic(width):
    assert model_cost(build_model("digit", width=width), (3, 28, 28)).macs == digit_macs(width)
    pre = count_flops(build_model("preresnet18", width=width), (3, 32, 32)) / 2
    assert pre == preresnet_macs(width)


def test_splitmix_ensemble_of_n_bases_costs_n_bases():
    ens = build_ensemble("digit", atom=0.125, max_width=1.0, norm="batch").eval()
    base = model_cost(ens.select([0]), (3, 28, 28))
    assert base.macs == digit_macs(0.125)
    assert base.params == digit_params(0.125)[0]
    for n in (2, 4, 8):
        cost = model_cost(ens.select(list(range(n))), (3, 28, 28))
        assert cost.macs == n * base.macs
        assert cost.params == n * base.params
        assert cost.model_bytes == n * base.model_bytes


def test_slimmable_subnetwork_counts_only_its_prefix_blocks():
    slim = build_model("digit", slimmable=True, norm="batch")
    dense = build_model("digit", width=0.25, norm="batch")
    slim.set_width(0.25)
    got, want = model_cost(slim, (3, 28, 28)), model_cost(dense, (3, 28, 28))
    assert got == want
    assert got.params < sum(p.numel() for p in slim.parameters()) / 10


def test_cost_leaves_the_model_mode_alone():
    model = build_model("digit", width=0.125).train()
    model_cost(model, (3, 28, 28))
    assert model.training and all(m.training for m in model.modules())
