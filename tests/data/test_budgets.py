"""Budget strings and their assignment to clients (docs/paper.md#budgets)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import lognorm

from splitmix.data.budgets import assign_budgets, is_lognormal, max_width, parse_widths
from splitmix.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "widths"),
    [
        ("8-4-2-1", [0.125, 0.25, 0.5, 1.0]),
        ("1-2-4-8", [0.125, 0.25, 0.5, 1.0]),
        ("8-1-1-1", [0.125, 1.0, 1.0, 1.0]),
        ("8-4-8d3-2", [0.125, 0.25, 0.375, 0.5]),
        ("4-2-4d3-1", [0.25, 0.5, 0.75, 1.0]),
        ("1", [1.0]),
        ("ln0.5_0.4", [i / 8 for i in range(1, 9)]),
    ],
)
def test_parse_widths(spec: str, widths: list[float]) -> None:
    assert parse_widths(spec) == widths


def test_max_width() -> None:
    assert max_width("8-4-8d3-2") == 0.5
    assert max_width("4-2-4d3-1") == 1.0
    assert max_width("ln0.5_0.4") == 1.0
    assert is_lognormal("ln0.5_0.4") and not is_lognormal("8-4-2-1")


@pytest.mark.parametrize(
    "spec", ["", "8-", "8--4", "a-b", "8-4d5", "0-1", "8d0", "8.5-1", "ln0.5", "ln0_0.4", "lnx_y"]
)
def test_malformed(spec: str) -> None:
    with pytest.raises(ConfigError, match="8-4-2-1") as exc:
        assign_budgets(spec, 10)
    assert "\n" not in str(exc.value) and repr(spec) in str(exc.value)


def _groups(b: np.ndarray) -> list[tuple[float, int, int]]:
    """(width, first index, last index) of each run of equal budgets."""
    out = []
    start = 0
    for i in range(1, len(b) + 1):
        if i == len(b) or b[i] != b[start]:
            out.append((float(b[start]), start, i - 1))
            start = i
    return out


def test_digits_k50() -> None:
    b = assign_budgets("8-4-2-1", 50)
    assert b.dtype == np.float64
    assert _groups(b) == [(0.125, 0, 12), (0.25, 13, 24), (0.5, 25, 37), (1.0, 38, 49)]


def test_domainnet_k30() -> None:
    b = assign_budgets("8-4-2-1", 30)
    assert _groups(b) == [(0.125, 0, 7), (0.25, 8, 14), (0.5, 15, 22), (1.0, 23, 29)]


def test_cifar_k100() -> None:
    b = assign_budgets("8-4-2-1", 100)
    assert [hi - lo + 1 for _, lo, hi in _groups(b)] == [25, 25, 25, 25]


def test_duplicated_ratios() -> None:
    b = assign_budgets("8-1-1-1", 100)
    assert (b == 0.125).sum() == 25 and (b == 1.0).sum() == 75
    assert np.all(np.diff(b) >= 0)


def test_fractional_tokens() -> None:
    b = assign_budgets("8-4-8d3-2", 40)
    assert _groups(b) == [(0.125, 0, 9), (0.25, 10, 19), (0.375, 20, 29), (0.5, 30, 39)]
    b = assign_budgets("4-2-4d3-1", 8)
    assert b.tolist() == [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0]


@pytest.mark.parametrize(("s", "scale", "k"), [(0.5, 0.4, 50), (1.0, 0.5, 30), (0.3, 0.6, 100)])
def test_lognormal_counts(s: float, scale: float, k: int) -> None:
    b = assign_budgets(f"ln{s}_{scale}", k)
    grid = np.arange(1, 9) / 8
    assert len(b) == k and np.all(np.isin(b, grid))
    assert np.all(np.diff(b) >= 0)
    # boundary formula recomputed here: width w_i gets clients [q_i, q_{i+1}), q_9 = K
    f = lognorm(s, scale=scale).cdf(grid)
    q = [int(k * (fi - f[0]) / (1 - f[0])) for fi in f] + [k]
    expected = [q[i + 1] - q[i] for i in range(8)]
    assert [int((b == w).sum()) for w in grid] == expected
    # q_1 = 0: the first group starts at client 0, and mass below w_1 is renormalised away
    assert q[0] == 0 and sum(expected) == k


@pytest.mark.parametrize("spec", ["8-4-2-1", "8-4-8d3-2", "ln0.5_0.4"])
def test_random_is_seeded_permutation(spec: str) -> None:
    index = assign_budgets(spec, 50)
    r1 = assign_budgets(spec, 50, mode="random", seed=3)
    r2 = assign_budgets(spec, 50, mode="random", seed=3)
    r3 = assign_budgets(spec, 50, mode="random", seed=4)
    assert np.array_equal(np.sort(r1), index)
    assert np.array_equal(r1, r2)
    assert not np.array_equal(r1, r3)
    assert not np.array_equal(r1, index)


def test_bad_mode_and_clients() -> None:
    with pytest.raises(ConfigError, match="budget_assignment"):
        assign_budgets("8-4-2-1", 10, mode="shuffle")
    with pytest.raises(ConfigError, match="clients"):
        assign_budgets("8-4-2-1", 0)


def test_budget_widths_name_a_client_budget_and_an_evaluated_width_or_say_what_is_allowed():
    from splitmix.data.budgets import BudgetWidths

    b = BudgetWidths("8-4-2-1", "mymethod")
    assert b.widths == [0.125, 0.25, 0.5, 1.0]
    assert b.match(0.25 + 1e-9) == 0.25 and b.match(0.3) is None
    assert b.of_client(3, 1.0) == 1.0
    with pytest.raises(ConfigError, match=r"client 2 has budget 0.3, not one of the widths of "
                       r"budgets='8-4-2-1' \(0.125, 0.25, 0.5, 1\)"):  # fmt: skip
        b.of_client(2, 0.3)
    with pytest.raises(ConfigError, match=r"mymethod evaluates the budget widths 0.125, 0.25, "
                       r"0.5, 1 \(its levels\); width 0.75 is none of them"):  # fmt: skip
        b.label(0.75, "its levels")
