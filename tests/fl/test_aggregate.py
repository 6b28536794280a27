"""MaskedAverage: per-entry weighted mean over the clients that covered each entry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from splitmix.fl.aggregate import MaskedAverage
from splitmix.fl.algorithm import Update


def _server() -> dict[str, torch.Tensor]:
    return {
        "w": torch.arange(12, dtype=torch.float32).reshape(4, 3),
        "b": torch.full((4,), -1.0),
        "untouched": torch.tensor([3.0, 4.0]),
        "nbt": torch.tensor(5),
    }


def test_two_clients_prefix_blocks_by_hand() -> None:
    state = _server()
    old = {k: v.clone() for k, v in state.items()}
    a_w = torch.full((2, 2), 10.0)
    b_w = torch.full((3, 3), 20.0)
    avg = MaskedAverage(state)
    # client A (weight 1) covers w[:2, :2], b[:2]; client B (weight 3) covers w[:3, :3], all of b
    avg.add_update(
        Update(
            {"w": a_w, "b": torch.tensor([1.0, 2.0]), "nbt": torch.tensor(7)},
            {"w": (slice(0, 2), slice(0, 2)), "b": (slice(0, 2),)},
        ),
        1.0,
    )
    avg.add_update(
        Update(
            {"w": b_w, "b": torch.tensor([5.0, 6.0, 7.0, 8.0]), "nbt": torch.tensor(9)},
            {"w": (slice(0, 3), slice(0, 3))},
        ),
        3.0,
    )
    avg.merge()
    expected_w = old["w"].clone()
    expected_w[:3, :3] = 20.0  # only B covers the ring outside [:2, :2]
    expected_w[:2, :2] = (1 * 10.0 + 3 * 20.0) / 4  # both: weighted mean 17.5
    assert torch.equal(state["w"], expected_w)
    assert torch.equal(state["w"][3], old["w"][3])  # row nobody covered keeps its value
    assert torch.allclose(state["b"], torch.tensor([(1 + 15) / 4, (2 + 18) / 4, 7.0, 8.0]))
    assert torch.equal(state["untouched"], old["untouched"])
    assert state["nbt"].item() == 9  # copied from the last uploader, not averaged ((7+27)/4)
    assert state["nbt"].dtype == torch.int64


def test_counter_follows_upload_order() -> None:
    state = _server()
    avg = MaskedAverage(state)
    avg.add("nbt", torch.tensor(9), 3.0)
    avg.add("nbt", torch.tensor(7), 1.0)
    avg.merge()
    assert state["nbt"].item() == 7


def test_weights_need_not_be_normalised_and_offsets_work() -> None:
    state = {"v": torch.zeros(5)}
    avg = MaskedAverage(state)
    avg.add("v", torch.tensor([1.0, 1.0]), 2.0, (slice(1, 3),))
    avg.add("v", torch.tensor([4.0, 4.0, 4.0]), 6.0, (slice(2, None),))
    avg.merge()
    # v[1]: only 1 ; v[2]: (2*1 + 6*4)/8 = 3.25 ; v[3], v[4]: only 4 ; v[0]: untouched 0
    assert torch.allclose(state["v"], torch.tensor([0.0, 1.0, 3.25, 4.0, 4.0]))


def test_zero_weight_client_covers_nothing() -> None:
    state = {"v": torch.tensor([1.0, 2.0])}
    avg = MaskedAverage(state)
    avg.add("v", torch.tensor([100.0, 100.0]), 0.0)
    avg.merge()
    assert torch.equal(state["v"], torch.tensor([1.0, 2.0]))


def test_merge_updates_a_module_in_place() -> None:
    lin = nn.Linear(3, 2)
    state = lin.state_dict()
    avg = MaskedAverage(state)
    avg.add("weight", torch.ones(2, 3), 0.5)
    avg.add("weight", 3 * torch.ones(2, 3), 0.5)
    avg.merge()
    assert torch.equal(lin.weight.detach(), torch.full((2, 3), 2.0))


def test_bad_uploads_are_refused_when_added() -> None:
    state = _server()
    avg = MaskedAverage(state)
    with pytest.raises(ValueError, match="spans"):
        avg.add("w", torch.zeros(2, 2), 1.0, (slice(0, 3), slice(0, 2)))
    with pytest.raises(ValueError, match=r"beyond the server tensor \(4, 3\)"):
        avg.add("w", torch.zeros(5, 3), 1.0)
    with pytest.raises(ValueError, match="beyond"):
        avg.add("b", torch.zeros(2), 1.0, (slice(3, None),))  # offset 3 + 2 entries > 4
    with pytest.raises(ValueError, match="beyond"):
        avg.add("b", torch.zeros(4, 1), 1.0)  # one dimension too many
    with pytest.raises(KeyError, match="nope"):
        avg.add("nope", torch.zeros(1), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        avg.add("b", torch.zeros(4), -1.0)
    before = {k: v.clone() for k, v in state.items()}
    avg.merge()  # nothing valid was added: the state is untouched
    for key, value in state.items():
        assert torch.equal(value, before[key]), key
