"""Client budgets: the widest sub-network each client can train (docs/paper.md#budgets).

A budget string is either a ``-``-separated list of widths, where token ``p`` means 1/p and
``pdq`` means q/p (``8-4-8d3-2`` -> 1/8, 1/4, 3/8, 1/2), or the lognormal family ``ln<s>_<scale>``
over the 8 widths 1/8, 2/8, ..., 1.

Default assignment is by client INDEX (the paper's setting): clients form contiguous groups in
domain-major order, ascending budget, so in Digits/DomainNet budget correlates with domain
(docs/paper.md#budgets). ``random`` assignment permutes the same multiset of budgets with its
own seeded stream, so it changes who gets which budget but never how many clients get each.
"""

from __future__ import annotations

import re
from fractions import Fraction

import numpy as np

from splitmix.errors import ConfigError
from splitmix.seeding import rng

MODES = ("index", "random")
LOGNORMAL_WIDTHS = tuple((i + 1) / 8 for i in range(8))

_TOKEN = re.compile(r"^(\d+)(?:d(\d+))?$")
_LOGNORMAL = re.compile(r"^ln(\d+(?:\.\d*)?|\.\d+)_(\d+(?:\.\d*)?|\.\d+)$")
_EXAMPLES = "e.g. '8-4-2-1' (widths 1/8..1), '8-4-8d3-2' (pdq = q/p) or 'ln0.5_0.4' (lognormal)"


def _bad(spec: str, why: str) -> ConfigError:
    return ConfigError(
        f"invalid budget string {spec!r} ({why}); valid strings look like {_EXAMPLES}"
    )


def _lognormal_params(spec: str) -> tuple[float, float] | None:
    m = _LOGNORMAL.match(spec)
    if m is None:
        return None
    s, scale = float(m.group(1)), float(m.group(2))
    if s <= 0 or scale <= 0:
        raise _bad(spec, "lognormal s and scale must be > 0")
    return s, scale


def is_lognormal(spec: str) -> bool:
    """Whether ``spec`` names the lognormal family (``ln<s>_<scale>``)."""
    return _lognormal_params(str(spec).strip()) is not None


def parse_widths(spec: str) -> list[float]:
    """The widths a budget string allows, ascending, duplicates kept (they weigh group sizes)."""
    spec = str(spec).strip()
    if spec.startswith("ln"):
        if _lognormal_params(spec) is None:
            raise _bad(spec, "lognormal form is ln<s>_<scale>")
        return list(LOGNORMAL_WIDTHS)
    if not spec:
        raise _bad(spec, "empty")
    widths = []
    for token in spec.split("-"):
        m = _TOKEN.match(token)
        if m is None:
            raise _bad(spec, f"token {token!r} is not p or pdq")
        p, q = int(m.group(1)), int(m.group(2) or 1)
        if p == 0 or q == 0 or q > p:
            raise _bad(spec, f"token {token!r} gives width {q}/{p}, outside (0, 1]")
        widths.append(float(Fraction(q, p)))
    return sorted(widths)


def max_width(spec: str) -> float:
    """The largest width of a budget string (the full model of the federation)."""
    return max(parse_widths(spec))


def _lognormal_boundaries(s: float, scale: float, num_clients: int) -> np.ndarray:
    """q_1..q_9 of docs/paper.md#budgets: clients [q_i, q_{i+1}) get w_i; mass
    P(w_i < X <= w_{i+1})."""
    # imported here: scipy.stats costs every job half a second of start-up otherwise
    from scipy.stats import lognorm

    cdf = lognorm(s, scale=scale).cdf(np.array(LOGNORMAL_WIDTHS))
    q = [int(num_clients * (f - cdf[0]) / (1.0 - cdf[0])) for f in cdf]
    return np.array([*q, num_clients], dtype=np.int64)


def _index_budgets(spec: str, num_clients: int) -> np.ndarray:
    widths = parse_widths(spec)
    params = _lognormal_params(spec)
    if params is None:
        # integer floor == int(len * i / K) of the original, without float rounding worries
        groups = (len(widths) * np.arange(num_clients)) // num_clients
        return np.asarray(widths, dtype=np.float64)[groups]
    bounds = _lognormal_boundaries(*params, num_clients)
    return np.repeat(np.asarray(widths, dtype=np.float64), np.diff(bounds))


def assign_budgets(
    spec: str, num_clients: int, *, mode: str = "index", seed: int = 0
) -> np.ndarray:
    """Max width per client (float64, length ``num_clients``).

    ``index``: contiguous ascending groups by client index (docs/paper.md#budgets); ``random``:
    the same budgets permuted with stream ``budgets`` of ``seed``.
    """
    spec = str(spec).strip()
    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ConfigError(f"number of clients must be an integer >= 1, got {num_clients!r}")
    if mode not in MODES:
        raise ConfigError(f"budget_assignment={mode!r} is invalid; allowed: {' | '.join(MODES)}")
    budgets = _index_budgets(spec, int(num_clients))
    if mode == "random":
        budgets = rng(seed, "budgets").permutation(budgets)
    return budgets


class BudgetWidths:
    """The distinct widths of a budget string, ascending, with the two lookups every method whose
    model sizes are labelled by budget widths needs (DepthFL's depths, FIARSE's fractions,
    ScaleFL's levels): a client's budget, and a width asked for at evaluation."""

    TOL = 1e-6

    def __init__(self, spec: str, method: str) -> None:
        self.spec, self.method = spec, method
        self.widths: list[float] = sorted(set(parse_widths(spec)))

    def match(self, width: float) -> float | None:
        """The budget width ``width`` names (up to float noise), or None."""
        return next((w for w in self.widths if abs(w - float(width)) < self.TOL), None)

    def of_client(self, client: int, budget: float) -> float:
        """Client ``client``'s budget as one of the widths; one-line ConfigError otherwise."""
        w = self.match(budget)
        if w is None:
            raise ConfigError(
                f"client {client} has budget {budget:g}, not one of the widths of budgets="
                f"{self.spec!r} ({', '.join(f'{v:g}' for v in self.widths)})"
            )
        return w

    def label(self, width: float, labels: str) -> float:
        """The width an evaluation asks for, as one of the widths (``labels``: what they label,
        for the message); one-line ConfigError otherwise."""
        w = self.match(width)
        if w is None:
            raise ConfigError(
                f"{self.method} evaluates the budget widths "
                f"{', '.join(f'{v:g}' for v in self.widths)} ({labels}); width {float(width):g} "
                "is none of them"
            )
        return w
