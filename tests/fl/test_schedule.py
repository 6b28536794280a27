"""LR schedules and client sampling: pure functions of (config, round)."""

from __future__ import annotations

import math

import pytest

from splitmix.errors import ConfigError
from splitmix.fl.sampling import sample_clients
from splitmix.fl.schedule import lr_at

from .toy import toy_config


def test_none_is_constant():
    cfg = toy_config(lr=0.05, lr_schedule="none", rounds=10)
    assert [lr_at(cfg, t) for t in (0, 5, 9)] == [0.05, 0.05, 0.05]


def test_cosine_values():
    cfg = toy_config(lr=0.1, lr_schedule="cos", rounds=8)
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 4) == pytest.approx(0.05)  # T/2: half the lr
    assert lr_at(cfg, 2) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)) / 2)
    lrs = [lr_at(cfg, t) for t in range(8)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # strictly decreasing
    assert lr_at(cfg, 8) == pytest.approx(0.0, abs=1e-12)


def test_multistep_values():
    cfg = toy_config(lr=0.1, lr_schedule="multistep", milestones=(5, 3), gamma=0.5, rounds=8)
    got = [lr_at(cfg, t) for t in range(7)]
    assert got == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_unknown_schedule():
    with pytest.raises(ConfigError, match="lr_schedule 'step'"):
        lr_at(toy_config(lr_schedule="step"), 0)


def test_all_clients_in_order():
    assert sample_clients(1, 0, 5, -1) == [0, 1, 2, 3, 4]
    assert sample_clients(1, 3, 5, 5) == [0, 1, 2, 3, 4]


def test_partial_participation_distinct_deterministic_and_fresh_each_round():
    draws = [sample_clients(7, r, 20, 4) for r in range(10)]
    for d in draws:
        assert len(d) == 4 and len(set(d)) == 4 and all(0 <= k < 20 for k in d)
    assert draws == [sample_clients(7, r, 20, 4) for r in range(10)]  # deterministic per seed
    assert len({tuple(sorted(d)) for d in draws}) > 5  # a fresh draw each round
    assert [sample_clients(8, r, 20, 4) for r in range(10)] != draws  # seed matters


def test_participation_out_of_range():
    for bad in (0, 6, -2):
        with pytest.raises(ConfigError, match=f"participation={bad}"):
            sample_clients(1, 0, 5, bad)
