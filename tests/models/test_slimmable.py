"""Slimmable (HeteroFL-family) models: prefix sub-networks equal dense models of that width, the
blocks each width uses, per-width tracked BN, and train-time division (docs/paper.md#heterofl,
#batch-norm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from splitmix.errors import ConfigError
from splitmix.models import (
    SlimmableDigitModel,
    SlimmableLinear,
    build_model,
    count_params,
    dense_state,
    prefix_block,
    prefix_blocks,
    sliced_state,
)

WIDTHS = (0.125, 0.25, 0.5, 1.0)
INPUT = {"digit": 28, "alexnet": 64, "preresnet18": 16}  # small inputs keep CPU tests fast


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tests check maths, and 2 OpenMP threads on a shared 2-core
    machine spin against other processes and run 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(arch: str, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = INPUT[arch]
    return torch.rand(n, 3, s, s, generator=g)


def _pair(arch: str, width: float, norm: str = "batch", rescale_layer: bool = False):
    torch.manual_seed(0)
    slim = build_model(arch, slimmable=True, norm=norm, input_size=INPUT[arch]).set_width(width)
    dense = build_model(
        arch, width=width, norm=norm, rescale_layer=rescale_layer, input_size=INPUT[arch]
    )
    # strict=True: every sliced block has exactly the dense model's shape, and nothing is missing
    dense.load_state_dict(dense_state(slim, width), strict=True)
    return slim, dense


@pytest.mark.parametrize("arch", ["digit", "alexnet", "preresnet18"])
def test_width_one_slimmable_equals_dense_with_same_weights(arch):
    slim, dense = _pair(arch, 1.0)
    slim.eval()
    dense.eval()
    x = _x(arch)
    torch.testing.assert_close(slim(x), dense(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "widths"),
    [("digit", WIDTHS), ("preresnet18", (0.125, 0.5)), ("alexnet", (0.125, 0.5))],
)
def test_prefix_subnetwork_equals_dense_model_of_that_width(arch, widths):
    x = _x(arch, n=6)
    for w in widths:
        slim, dense = _pair(arch, w, rescale_layer=True)
        # eval: no division anywhere; train: slimmable layers divide by w exactly where the dense
        # model's Scalers do, and batch-stat BN behaves the same in both.
        for train in (False, True):
            slim.train(train)
            dense.train(train)
            torch.testing.assert_close(slim(x), dense(x), rtol=1e-4, atol=1e-5)
        assert count_params(slim, width=w) == count_params(dense)


def test_tracked_slimmable_prefix_equals_dense_with_that_widths_private_bn():
    slim, dense = _pair("digit", 0.25, norm="tracked")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # make every private BN's statistics distinctive
        for k, v in slim.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(0.5 + torch.rand(v.shape, generator=g))
            elif k.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=g))
    dense.load_state_dict(dense_state(slim, 0.25), strict=True)
    slim.eval()
    dense.eval()
    x = _x("digit")
    torch.testing.assert_close(slim(x), dense(x), rtol=1e-4, atol=1e-5)


def test_prefix_blocks_slices_for_batch_norm():
    model = SlimmableDigitModel(norm="batch")
    state = model.state_dict()
    for w in WIDTHS:
        blocks = prefix_blocks(model, w)
        assert set(blocks) == set(state)  # a batch-stat model uses every tensor at every width

        def c(n: int, w: float = w) -> int:
            return int(n * w)  # paper widths: int == ceil

        assert blocks["conv1.weight"] == (slice(0, c(64)), slice(0, 3), slice(0, 5), slice(0, 5))
        assert blocks["conv2.weight"][:2] == (slice(0, c(64)), slice(0, c(64)))
        assert blocks["fc1.weight"] == (slice(0, c(2048)), slice(0, c(128) * 49))
        assert blocks["fc3.weight"] == (slice(0, 10), slice(0, c(512)))
        assert blocks["fc3.bias"] == (slice(0, 10),)
        assert blocks["bn4.weight"] == (slice(0, c(2048)),)
        assert blocks["conv3.bias"] == (slice(0, c(128)),)
        sub = sliced_state(model, w)
        assert sub["fc2.weight"].shape == (c(512), c(2048))
        assert sub["fc2.weight"].data_ptr() == state["fc2.weight"].data_ptr()  # a view, no copy


def test_prefix_blocks_for_private_per_width_bn():
    model = SlimmableDigitModel(norm="tracked", widths=(0.125, 0.5, 1.0))
    blocks = prefix_blocks(model, 0.5)
    bn_keys = {k for k in blocks if k.startswith("bn")}
    assert {k.split(".")[2] for k in bn_keys} == {"1"}  # only widths[1] = 0.5's BN
    assert blocks["bn1.norms.1.running_mean"] == (slice(0, 32),)
    assert blocks["bn1.norms.1.num_batches_tracked"] == ()
    assert prefix_block(model, "bn1.norms.0.weight", 0.5) is None
    assert prefix_block(model, "bn1.norms.0.weight", 0.125) == (slice(0, 8),)
    assert model.state_dict()["bn4.norms.0.weight"].shape == (256,)
    with pytest.raises(ConfigError, match="width 0.25 has no private BN"):
        prefix_blocks(model, 0.25)


def test_per_width_bn_updates_only_that_widths_statistics():
    model = SlimmableDigitModel(norm="tracked", widths=(0.25, 1.0)).set_width(0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(_x("digit"))
    after = model.state_dict()
    assert not torch.equal(before["bn1.norms.0.running_mean"], after["bn1.norms.0.running_mean"])
    assert torch.equal(before["bn1.norms.1.running_mean"], after["bn1.norms.1.running_mean"])
    with pytest.raises(ConfigError, match="has no private BN"):
        model.set_width(0.5)
    assert model.width == 0.25 and all(getattr(m, "width", 0.25) == 0.25 for m in model.modules())


def test_gradients_stay_inside_the_prefix_block():
    model = SlimmableDigitModel(norm="batch").set_width(0.25)
    model.train()
    F.cross_entropy(model(_x("digit", n=8)), torch.arange(8) % 10).backward()
    blocks = prefix_blocks(model, 0.25)
    for name, p in model.named_parameters():
        inside = torch.zeros_like(p, dtype=torch.bool)
        inside[blocks[name]] = True
        outside = p.grad[~inside]
        assert outside.numel() == 0 or outside.abs().max().item() == 0.0, name
        assert p.grad[inside].abs().sum().item() > 0, name


def test_slimmable_linear_divides_by_width_in_training_unless_output_is_fixed():
    torch.manual_seed(0)
    lin = SlimmableLinear(8, 6)
    lin.set_width(0.5)
    x = torch.randn(3, 4)
    ref = F.linear(x, lin.weight[:3, :4], lin.bias[:3])
    lin.train()
    torch.testing.assert_close(lin(x), ref / 0.5)
    lin.eval()
    torch.testing.assert_close(lin(x), ref)
    head = SlimmableLinear(8, 6, fixed_out=True)
    head.set_width(0.5)
    head.train()
    torch.testing.assert_close(head(x), F.linear(x, head.weight[:, :4], head.bias))


def test_slimmable_rejects_bad_widths_and_options():
    with pytest.raises(ConfigError, match="outside"):
        SlimmableDigitModel().set_width(1.5)
    with pytest.raises(ConfigError, match="not available for slimmable"):
        build_model("digit", slimmable=True, norm="dual")
    with pytest.raises(ConfigError, match="rescale_init/rescale_layer"):
        build_model("digit", slimmable=True, rescale_layer=True)
