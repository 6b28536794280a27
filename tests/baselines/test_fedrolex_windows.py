"""FedRolex / Federated Dropout windows and the blocks they give, checked against the maths of
the official code (AIoT-MLSys-Lab/FedRolex, ``resnet_server.py``: ``split_model``)."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.fedrolex import (
    as_entry,
    expand_group,
    random_window,
    rolling_window,
    static_window,
    window_blocks,
    window_fn,
)
from splitmix.errors import ConfigError
from splitmix.models import build_model, prefix_blocks

WIDTHS = (0.125, 0.25, 0.5, 1.0)


def _digit(norm: str = "batch") -> torch.nn.Module:
    return build_model("digit", slimmable=True, widths=WIDTHS, norm=norm, seed=0)


def _indices(entry: slice | torch.Tensor) -> list[int]:
    if isinstance(entry, slice):
        return list(range(entry.start, entry.stop))
    return entry.tolist()


# ---- one dimension -------------------------------------------------------------------------------
def test_rolling_window_at_rounds_0_1_last_and_wrap() -> None:
    # K = 5, n = 2: roll(arange(5), t)[:2]; torch.roll moves entry i to (i + t) mod 5
    assert rolling_window(5, 2, 0).tolist() == [0, 1]  # round 0: the prefix
    assert rolling_window(5, 2, 1).tolist() == [4, 0]  # [4, 0, 1, 2, 3][:2]: wraps at once
    assert rolling_window(5, 2, 4).tolist() == [1, 2]  # t = K-1: [1, 2, 3, 4, 0][:2]
    assert rolling_window(5, 2, 5).tolist() == [0, 1]  # t = K: back to round 0
    assert rolling_window(5, 2, 12).tolist() == rolling_window(5, 2, 2).tolist() == [3, 4]
    # K = 8, n = 3, t = 2: [6, 7, 0]
    assert rolling_window(8, 3, 2).tolist() == [6, 7, 0]


def test_rolling_window_covers_each_channel_n_times_over_k_rounds() -> None:
    k, n = 12, 5
    counts = torch.zeros(k, dtype=torch.int64)
    for t in range(k):
        counts[rolling_window(k, n, t)] += 1
    assert counts.tolist() == [n] * k


def test_static_window_is_the_prefix() -> None:
    assert static_window(8, 3).tolist() == [0, 1, 2]


def test_random_window_is_a_seeded_subset() -> None:
    w = random_window(64, 8, seed=3)
    assert len(set(w.tolist())) == 8 and all(0 <= i < 64 for i in w.tolist())
    assert torch.equal(w, random_window(64, 8, seed=3))  # the seed fixes it (exact resume)
    assert not torch.equal(w, random_window(64, 8, seed=4))


def test_random_windows_cover_every_channel_over_rounds() -> None:
    # 8 of 64 channels a round: after 100 rounds a given channel is missed with (7/8)^100 ~ 2e-6
    seen = set()
    for seed in range(100):
        seen.update(random_window(64, 8, seed).tolist())
    assert seen == set(range(64))


def test_windows_reject_an_empty_or_oversized_keep() -> None:
    with pytest.raises(ValueError):
        rolling_window(4, 0, 1)
    with pytest.raises(ValueError):
        static_window(4, 5)
    with pytest.raises(ConfigError):
        window_fn("sliding", 0)


def test_as_entry_sorts_and_makes_contiguous_sets_slices() -> None:
    assert as_entry(torch.tensor([4, 0])).tolist() == [0, 4]  # a wrapped window
    assert as_entry(torch.tensor([2, 1])) == slice(1, 3)
    assert as_entry(rolling_window(6, 6, 2)) == slice(0, 6)  # a full window is the whole dim


def test_expand_group_is_channel_major() -> None:
    # channels 2 and 0 of a (C, 3)-flatten: features 6, 7, 8 and 0, 1, 2
    assert expand_group(torch.tensor([2, 0]), 3).tolist() == [6, 7, 8, 0, 1, 2]


# ---- the blocks of a whole model ---------------------------------------------------------------
@pytest.mark.parametrize("width", WIDTHS)
def test_static_blocks_equal_heterofl_prefix_blocks(width: float) -> None:
    model = _digit()
    assert window_blocks(model, width, static_window) == prefix_blocks(model, width)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("round_idx", [0, 1, 37, 63, 64, 130])
def test_rolling_blocks_follow_the_official_chain(width: float, round_idx: int) -> None:
    """The official rule written out layer by layer for the Digits model: each hidden layer's
    output window is roll(arange(K), t % K)[:ceil(w K)], its input is the previous layer's
    output window (fc1: each channel's 7*7 features), conv1's input and fc3's output whole."""
    model = _digit()
    blocks = window_blocks(model, width, lambda k, n: rolling_window(k, n, round_idx))
    previous = list(range(3))
    for layer, k, group in (("conv1", 64, 1), ("conv2", 64, 1), ("conv3", 128, 1),
                            ("fc1", 2048, 49), ("fc2", 512, 1)):  # fmt: skip
        out = torch.roll(torch.arange(k), round_idx % k)[: math.ceil(width * k)].tolist()
        inp = [c * group + s for c in previous for s in range(group)]
        w = blocks[f"{layer}.weight"]
        assert set(_indices(w[0])) == set(out), layer
        assert set(_indices(w[1])) == set(inp), layer
        assert all(e == slice(0, 5) for e in w[2:]), layer  # conv kernels whole
        assert set(_indices(blocks[f"{layer}.bias"][0])) == set(out), layer
        bn = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "fc1": "bn4", "fc2": "bn5"}[layer]
        for p in ("weight", "bias"):
            assert set(_indices(blocks[f"{bn}.{p}"][0])) == set(out), bn
        previous = out
    assert blocks["fc3.weight"][0] == slice(0, 10)
    assert set(_indices(blocks["fc3.weight"][1])) == set(previous)
    assert blocks["fc3.bias"] == (slice(0, 10),)
    assert blocks.keys() == prefix_blocks(model, width).keys()


def test_a_wrapped_window_is_an_index_tensor_with_the_prefix_block_shape() -> None:
    model = _digit()
    blocks = window_blocks(model, 0.125, lambda k, n: rolling_window(k, n, 3))
    out = blocks["conv1.weight"][0]  # K = 64, n = 8, t = 3: channels 61, 62, 63, 0 .. 4
    assert isinstance(out, torch.Tensor)
    assert out.tolist() == [0, 1, 2, 3, 4, 61, 62, 63]
    state = model.state_dict()
    for key, block in prefix_blocks(model, 0.125).items():
        shape = state[key][block].shape
        got = tuple(len(_indices(e)) for e in blocks[key])
        assert got == tuple(shape[: len(got)]), key


def test_random_blocks_share_one_subset_per_channel_count() -> None:
    model = _digit()
    blocks = window_blocks(model, 0.25, window_fn("random", 0, seed=11))
    conv1_out = _indices(blocks["conv1.weight"][0])
    assert len(conv1_out) == 16
    # conv2 reads conv1's channels and writes the same 64-channel subset (one draw per K)
    assert _indices(blocks["conv2.weight"][1]) == conv1_out
    assert _indices(blocks["conv2.weight"][0]) == conv1_out
    assert _indices(blocks["conv3.weight"][1]) == conv1_out


def test_tracked_bn_is_refused() -> None:
    with pytest.raises(ConfigError, match="bn: batch"):
        window_blocks(_digit("tracked"), 0.5, static_window)
