"""ScaleFL (baselines/scalefl.py): width x depth sub-models and their exits by hand, the levels of
a budget string, the loss and its self-distillation term, per-element aggregation of blocks, and
the config checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fl.test_baselines import make, train_client
from fl.toy import toy_config

from baselines.scalefl import levels_for_widths, scalefl_loss, self_distillation
from splitmix.errors import ConfigError
from splitmix.methods import check_params

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- sub-models by hand ----------------------------------------------------------------------
def _shapes(alg, level: int) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in alg.level_net(level).state_dict().items()}


def test_level_sub_models_have_the_width_and_depth_of_their_level():
    alg = make("scalefl")  # levels (0.7, 1), (0.7, 2), (0.75, 3), (1, 4); 3 exit convs
    s0 = _shapes(alg, 0)
    # DigitModel at width 0.7: int(0.7 * 64) = 44 channels; depth 1: conv1 and its exit only
    assert s0["stages.0.0.weight"] == (44, 3, 5, 5)
    assert {k.split(".")[1] for k in s0} == {"0"}
    assert [s0[f"exits.0.{i}.weight"] for i in (0, 3, 6)] == [(44, 44, 3, 3)] * 3
    assert s0["exits.0.11.weight"] == (10, 44)  # pool, flatten, linear to the classes
    s2 = _shapes(alg, 2)  # width 0.75: 48, 48, 96 channels; three stages, no fc layers yet
    assert s2["stages.1.0.weight"] == (48, 48, 5, 5)
    assert s2["stages.2.0.weight"] == (96, 48, 5, 5)
    assert s2["exits.2.11.weight"] == (10, 96)
    assert not any(k.startswith("stages.3") for k in s2)
    s3 = _shapes(alg, 3)  # the whole model at full width
    assert s3["stages.3.1.weight"] == (2048, 128 * 7 * 7)
    assert s3["exits.3.weight"] == (10, 512)
    assert s3 == {k: tuple(t.shape) for k, t in alg.server.state_dict().items()}


def test_a_level_model_is_the_top_left_block_of_every_global_tensor():
    alg = make("scalefl")
    task = alg.plan(0, [1], None)[0]
    model = alg.download(task)
    server = alg.server.state_dict()
    for key, t in model.state_dict().items():
        block = tuple(slice(0, s) for s in t.shape)
        assert torch.equal(t, server[key][block]), key


def test_a_deployed_level_holds_its_stages_and_deepest_exit_only():
    alg = make("scalefl")
    model = alg.deploy(0.25)  # level 1: two stages, width 0.7
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"stages", "exit"}
    x = torch.rand(4, 3, 28, 28)
    net = alg.level_net(1)
    alg.load_client_state(net, None, alg.level_blocks(1))
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), net.exit_logits(x)[-1], atol=1e-6)
    stored = sum(alg._server_state[k][b].numel() for k, b in alg.serving_blocks(0.25).items())
    assert stored == sum(t.numel() for t in model.state_dict().values())


def test_budgets_take_the_last_levels_by_rank():
    assert levels_for_widths([0.125, 0.25, 0.5, 1.0], 4) == {0.125: 0, 0.25: 1, 0.5: 2, 1.0: 3}
    assert levels_for_widths([0.125, 1.0, 1.0, 1.0], 4) == {0.125: 2, 1.0: 3}
    assert make("scalefl", budgets="8-1-1-1").client_levels == [2, 3, 3, 3]


# ---- the loss ----------------------------------------------------------------------------------
def test_the_distillation_term_is_zero_when_exits_predict_the_same_distribution():
    z = torch.randn(5, 10)
    assert self_distillation(z, z, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert self_distillation(z, z + 4.0, 3.0).item() == pytest.approx(0.0, abs=1e-7)  # same softmax
    assert self_distillation(z, torch.randn(5, 10), 3.0).item() > 0


def test_the_loss_weighs_exit_j_by_j_and_adds_distillation_from_the_deepest():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 10, generator=g) for _ in range(3)]
    y = torch.randint(0, 10, (6,), generator=g)
    ce = [F.cross_entropy(z, y) for z in logits]
    plain = scalefl_loss(logits, y, F.cross_entropy, 0.0, 3.0)
    assert plain.item() == pytest.approx(((1 * ce[0] + 2 * ce[1] + 3 * ce[2]) / 6).item())
    kd = [
        9.0 * F.kl_div(F.log_softmax(z / 3, 1), F.softmax(logits[2] / 3, 1), reduction="mean")
        for z in logits[:2]
    ]
    with_kd = scalefl_loss(logits, y, F.cross_entropy, 0.5, 3.0)
    expected = (1 * (ce[0] + 0.5 * kd[0]) + 2 * (ce[1] + 0.5 * kd[1]) + 3 * ce[2]) / 6
    assert with_kd.item() == pytest.approx(expected.item(), rel=1e-6)


def test_distillation_starts_after_a_quarter_of_the_rounds():
    alg = make("scalefl")
    rounds = alg.cfg.rounds
    assert alg.kd_weight_at(0) == 0.0
    assert alg.kd_weight_at(int(0.25 * rounds)) == 0.0
    assert alg.kd_weight_at(int(0.25 * rounds) + 1) == 0.05


# ---- aggregation -------------------------------------------------------------------------------
def test_each_element_is_averaged_over_the_clients_whose_level_holds_it():
    alg = make("scalefl")
    tasks = alg.plan(0, [0, 3], None)  # a width-0.7 depth-1 client and the full one
    ups = [train_client(alg, t) for t in tasks]
    before = alg.server.state_dict()["stages.0.0.weight"].clone()
    alg.aggregate([(tasks[0], ups[0], 0.25), (tasks[1], ups[1], 0.75)])
    after = alg.server.state_dict()["stages.0.0.weight"]
    small, full = ups[0].tensors["stages.0.0.weight"], ups[1].tensors["stages.0.0.weight"]
    assert torch.allclose(after[:44], 0.25 * small + 0.75 * full[:44], atol=1e-6)
    assert torch.allclose(after[44:], full[44:], atol=1e-6)  # only the full client covered these
    assert not torch.equal(after, before)
    fc = alg.server.state_dict()["stages.3.1.weight"]
    assert torch.allclose(fc, ups[1].tensors["stages.3.1.weight"])  # the full client alone


# ---- configuration -------------------------------------------------------------------------------
def test_bad_parameters_fail_the_config_check_in_one_line():
    cfg = toy_config(algorithm="scalefl", method="scalefl", arch="digit", dataset="digits-mini")
    for bad, rule in (
        ({"kd_weight": -0.1}, r"params.kd_weight: -0.1 is less than the minimum of 0"),
        (
            {"level_depths": [1, 2, 3, 5]},
            r"level_depths.3: 5 is greater than the maximum of 4",
        ),
        ({"level_widths": [0.0, 0.7, 0.75, 1.0]}, r"level_widths.0: 0.0 is less than or equal to"),
        ({"level_widths": [0.7, 1.0]}, r"level_widths has 2 entries and level_depths 4"),
        ({"level_widths": [0.7, 1.0], "level_depths": [2, 4]}, r"have 4 distinct widths but"),
        ({"temperature": 0}, r"params.temperature: 0 is less than or equal to the minimum"),
    ):
        with pytest.raises(ConfigError, match=rule) as exc:
            check_params(dataclasses.replace(cfg, method_params=bad))
        assert "\n" not in str(exc.value)
