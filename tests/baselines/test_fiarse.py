"""FIARSE (baselines/fiarse.py): importance masks by hand on small tensors, nesting, the
straight-through gradient, per-element aggregation over the clients whose mask covered an element,
what goes over the wire, and the config checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from fl.test_baselines import make, train_client
from fl.toy import toy_config

from baselines.fiarse import ThresholdMask, keep_mask, maskable_keys, threshold
from splitmix.errors import ConfigError
from splitmix.evaluate.cost import model_cost
from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import Update
from splitmix.methods import check_params

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- masks by hand ---------------------------------------------------------------------------
def test_the_kept_set_is_the_top_k_by_magnitude_over_all_tensors_together():
    a = torch.tensor([0.5, -3.0, 2.0])
    b = torch.tensor([[0.1, -1.0], [4.0, -0.2]])
    # 7 elements, fraction 3/7: k = 3 -> |4|, |-3|, |2| are kept, one threshold for both tensors
    theta = threshold([a, b], 3 / 7)
    assert theta == 2.0
    assert keep_mask(a, theta).tolist() == [False, True, True]
    assert keep_mask(b, theta).tolist() == [[False, False], [True, False]]
    assert threshold([a, b], 1.0) == 0.0  # the whole model keeps everything
    assert threshold([a, b], 0.01) == 4.0  # at least one element: k = max(1, int(f N))


def test_masks_of_smaller_budgets_are_nested_in_larger_ones():
    alg = make("fiarse")
    fractions = sorted(alg.fraction_of.values())
    assert fractions == [1 / 64, 1 / 16, 1 / 4, 1.0]  # width squared, FIARSE's own sizes
    masks = [alg.masks(f) for f in fractions]
    total = sum(alg._server_state[k].numel() for k in alg.maskable)
    for small, large, f in zip(masks, masks[1:], fractions, strict=False):
        kept = sum(int(m.sum()) for m in small.values())
        theta = alg.threshold(f)
        ties = sum(int((alg._server_state[k].abs() == theta).sum()) for k in alg.maskable)
        assert int(f * total) <= kept <= int(f * total) + ties - 1  # k, more only on a tie
        assert all(bool((small[k] <= large[k]).all()) for k in small)
    assert all(bool(m.all()) for m in masks[-1].values())


def test_maskable_tensors_are_conv_and_linear_weights_and_biases_not_bn():
    alg = make("fiarse")
    keys = maskable_keys(alg.server)
    assert "conv1.weight" in keys and "fc3.bias" in keys  # first and last layers too
    assert not any(k.startswith("bn") for k in keys)


# ---- the straight-through gradient -----------------------------------------------------------
@pytest.mark.parametrize("surrogate", [False, True])
def test_the_gradient_reaches_kept_weights_only(surrogate):
    w = torch.tensor([0.5, -3.0, 2.0, -0.1], requires_grad=True)
    theta = 1.0
    out = ThresholdMask.apply(w, theta, surrogate)
    assert out.tolist() == [0.0, -3.0, 2.0, -0.0]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out.backward(g)
    a = w.detach().abs()
    scale = 1 + 2 * theta * a / (a + theta) ** 2 if surrogate else torch.ones(4)
    expected = g * (a >= theta) * scale
    assert torch.allclose(w.grad, expected)
    if surrogate:  # at |w| = 3, theta = 1: 1 + 6 / 16
        assert w.grad[1].item() == pytest.approx(2.0 * (1 + 6 / 16))


# ---- aggregation per element -----------------------------------------------------------------
def test_each_element_is_averaged_over_the_clients_whose_mask_covered_it():
    server = {"w": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    merge = MaskedAverage(server)
    m1 = torch.tensor([True, True, False, False])
    m2 = torch.tensor([True, False, True, False])
    merge.add_update(Update({"w": torch.tensor([1.0, 2.0])}, masks={"w": m1}), 0.25)
    merge.add_update(Update({"w": torch.tensor([5.0, 7.0])}, masks={"w": m2}), 0.75)
    merge.merge()
    # element 0: both clients (weights 1/4, 3/4); 1: client 1 alone; 2: client 2 alone; 3: nobody
    assert server["w"].tolist() == [0.25 * 1 + 0.75 * 5, 2.0, 7.0, 40.0]


def test_an_upload_is_the_kept_values_and_one_bit_per_element():
    alg = make("fiarse")
    task = alg.plan(0, [0], None)[0]  # the 1/8 budget: 1/64 of the parameters
    update = train_client(alg, task)
    theta = alg.threshold(alg.fraction(task.widths[0]))
    for key in alg.maskable:
        assert update.tensors[key].numel() == int(update.masks[key].sum())
        assert bool((update.tensors[key].abs() >= theta).all())
    values = sum(t.numel() * 4 for t in update.tensors.values())
    bits = sum(math.ceil(m.numel() / 8) for m in update.masks.values())
    assert update.nbytes() == values + bits
    assert "bn1.weight" in update.tensors and "bn1.weight" not in update.masks  # BN whole


def test_an_assembled_model_counts_its_kept_parameters_and_dense_macs():
    alg = make("fiarse")
    full = model_cost(alg.assemble(1.0), (3, 28, 28))
    small = model_cost(alg.assemble(0.125), (3, 28, 28))
    masks = alg.masks(1 / 64)
    kept = sum(int(m.sum()) for m in masks.values())
    bn = sum(t.numel() for k, t in alg.server.named_parameters() if k not in masks)
    assert small.params == kept + bn
    assert small.macs == full.macs  # the masked model runs every multiply
    x = torch.rand(4, 3, 28, 28)
    model = alg.assemble(0.125)
    for key in alg.maskable:  # zeros where masked
        t = model.state_dict()[key]
        assert bool((t[~masks[key]] == 0).all())
    assert model(x).shape == (4, 10)


def test_one_round_learns_and_the_server_moves_only_covered_elements():
    alg = make("fiarse")
    before = {k: v.clone() for k, v in alg._server_state.items()}
    tasks = alg.plan(0, [0], None)  # the smallest client only
    alg.aggregate([(tasks[0], train_client(alg, tasks[0]), 1.0)])
    up_mask = {k: keep_mask(before[k], alg.threshold(1 / 64)) for k in alg.maskable}
    for key in alg.maskable:  # elements outside the client's starting mask did not move
        outside = ~up_mask[key]
        assert torch.equal(alg._server_state[key][outside], before[key][outside])
    assert not torch.equal(alg._server_state["fc3.weight"], before["fc3.weight"])
    loss = F.cross_entropy(alg.assemble(0.125)(torch.rand(4, 3, 28, 28)), torch.zeros(4).long())
    assert math.isfinite(float(loss))


# ---- configuration ---------------------------------------------------------------------------
def test_bad_parameters_fail_the_config_check_in_one_line():
    cfg = toy_config(algorithm="fiarse", method="fiarse", arch="digit", dataset="digits-mini")
    for bad, rule in (
        ({"fractions": [0.0, 0.1, 0.2, 1.0]}, r"params.fractions: 0.0 is less than or equal to"),
        ({"fractions": [0.1, 0.2, 0.5, 1.5]}, r"params.fractions: 1.5 is greater than the max"),
        ({"fractions": [0.5, 1.0]}, r"fractions has 2 entries but budgets '8-4-2-1' have 4"),
        ({"fractions": [0.5, 0.2, 0.6, 1.0]}, r"must not decrease with the budget width"),
        ({"gradient": "soft"}, r"params.gradient: 'soft' is not one of"),
    ):
        with pytest.raises(ConfigError, match=rule) as exc:
            check_params(dataclasses.replace(cfg, method_params=bad))
        assert "\n" not in str(exc.value)
    ok = dataclasses.replace(cfg, method_params={"fractions": [0.01, 0.1, 0.3, 1.0]})
    assert check_params(ok) is ok
    assert make("fiarse", fractions=[0.01, 0.1, 0.3, 1.0]).fraction(0.25) == 0.1
