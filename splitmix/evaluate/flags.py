"""Under-training flags: is a run too short to stand behind its numbers? (docs/evaluation.md).

A table that compares methods is only meaningful where every method has converged; a run cut off
while it was still improving, or one that never left chance level, says nothing about its method.
Two rules, each a flag row in the evaluation rows, decided here once so that the report, Table 1
and the claims check never re-derive them differently:

* **still rising**: the validation curve of the widest width (the one ``best.pt`` is chosen by;
  clean BN for dual-BN models) gained more than ``rise`` in its last validations. With ``v_1..v_n``
  the accuracies of the ``n`` validated rounds and ``k = min(window, n // 2)``, the rise is
  ``max(v_{n-k+1..n}) - max(v_{n-2k+1..n-k})``: the best of the last ``k`` validations minus the
  best of the ``k`` before. Bests, not last values, so a noisy flat curve does not look like a
  rising one. The margin is ``max(rise, noise_z * SE)``, where ``SE = sqrt(p (1 - p) / n_val)`` is
  the standard error of one validation of the run's ``n_val`` images at its final accuracy ``p``:
  on 600 validation images at 88% one validation is uncertain by 1.3 points, so a fixed 2-point
  margin on a difference of two maxima can flag a converged run by noise alone.
  Fewer than two validations cannot show that learning stopped: flagged.
* **near chance**: a clean test accuracy (mean over clients; every width, dual-BN models at
  lambda 0) at or below ``1 / num_classes + chance_margin``.

A cosine or step schedule flattens the end of every curve, so "not rising" does not prove
convergence; it is the cheap check a table can make, and the near-chance rule catches the runs
that a decayed learning rate froze before they learned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from splitmix.errors import ConfigError
from splitmix.evaluate.rows import ALL, MEAN, TEST_ROUND, RunKey

# Accuracies are ratios of image counts: a value exactly at a threshold (0.53 - 0.50 vs 0.03) must
# land on the same side whatever the float rounding of the subtraction.
_TOL = 1e-9


@dataclass(frozen=True)
class FlagRule:
    """Parameters of the two rules (defaults documented in docs/evaluation.md)."""

    window: int = 3  # k: validations compared (last k against the k before)
    rise: float = 0.02  # m: a gain above this (accuracy fraction, 0.02 = 2 points) is "rising"
    chance_margin: float = 0.05  # delta: accuracy <= 1/classes + delta is "near chance"
    noise_z: float = 2.0  # z: the rise must also exceed z standard errors of one validation

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"--flag-window {self.window} must be >= 1 (validations compared)")
        for name, value in (("flag-rise", self.rise), ("flag-chance", self.chance_margin)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(
                    f"--{name} {value!r} must be an accuracy fraction in [0, 1), e.g. 0.02"
                )
        if not 0.0 <= self.noise_z <= 10.0:
            raise ConfigError(
                f"--flag-noise {self.noise_z!r} must be a number of standard errors in [0, 10], "
                "e.g. 2 (0 = the fixed margin alone)"
            )


def val_rise(curve: Sequence[float], window: int) -> float | None:
    """Best of the last ``k`` values minus the best of the ``k`` before, ``k = min(window,
    n // 2)``; None for fewer than two values (no "before" to compare with)."""
    k = min(int(window), len(curve) // 2)
    if k < 1:
        return None
    last = curve[len(curve) - k :]
    before = curve[len(curve) - 2 * k : len(curve) - k]
    return float(max(last) - max(before))


def rise_margin(curve: Sequence[float], rule: FlagRule, n_val: int | None = None) -> float:
    """The rise a curve must exceed to count as rising: ``rule.rise``, or ``rule.noise_z``
    standard errors of one validation of ``n_val`` images at the curve's final accuracy when that
    is larger (module docstring). Without ``n_val`` (or a curve) the fixed margin alone."""
    if not n_val or not curve:
        return float(rule.rise)
    p = min(max(float(curve[-1]), 0.0), 1.0)
    return max(float(rule.rise), rule.noise_z * math.sqrt(p * (1.0 - p) / int(n_val)))


def is_rising(curve: Sequence[float], rule: FlagRule, n_val: int | None = None) -> bool:
    """The "still rising" rule (module docstring); a curve too short to judge counts as rising."""
    rise = val_rise(curve, rule.window)
    return rise is None or rise > rise_margin(curve, rule, n_val) + _TOL


def chance_level(num_classes: int) -> float:
    return 1.0 / int(num_classes)


def is_near_chance(acc: float, num_classes: int, rule: FlagRule) -> bool:
    return acc <= chance_level(num_classes) + rule.chance_margin + _TOL


def _nan_to_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _clean(lam: float | None) -> bool:
    """Clean-BN rows: no lambda (single BN) or lambda 0 (dual BN's clean statistics)."""
    return lam is None or lam == 0.0


def widest_curve(rows: Iterable[Mapping[str, Any]]) -> tuple[float | None, list[float]]:
    """(widest width, its clean ``val_acc`` values in round order) from evaluation rows."""
    curves: dict[float, list[tuple[int, float]]] = {}
    for r in rows:
        if r["metric"] != "val_acc" or r["client"] != MEAN or r["domain"] != ALL:
            continue
        if not _clean(_nan_to_none(r["lam"])):
            continue
        curves.setdefault(float(r["width"]), []).append((int(r["round"]), float(r["value"])))
    if not curves:
        return None, []
    widest = max(curves)
    return widest, [v for _, v in sorted(curves[widest])]


def flag_rows(
    key: RunKey,
    rows: Sequence[Mapping[str, Any]],
    num_classes: int,
    rule: FlagRule,
    n_val: int | None = None,
) -> list[dict[str, Any]]:
    """The flag rows of one run from its other evaluation rows: the rule's parameters (the rise
    margin as applied to this run's ``n_val`` validation images), the chance level, ``val_rise``
    and ``flag_rising`` at the widest width, and ``flag_near_chance`` per (width, lambda) of its
    clean mean test accuracy. Flags are 1 (flagged) or 0."""
    width, curve = widest_curve(rows)
    out = [
        key.row("flag_window", rule.window),
        key.row("flag_rise_margin", rise_margin(curve, rule, n_val)),
        key.row("flag_noise_z", rule.noise_z),
        key.row("flag_chance_margin", rule.chance_margin),
        key.row("chance_acc", chance_level(num_classes)),
    ]
    if width is not None:
        rise = val_rise(curve, rule.window)
        if rise is not None:
            out.append(key.row("val_rise", rise, width=width))
        out.append(key.row("flag_rising", float(is_rising(curve, rule, n_val)), width=width))
    for r in rows:
        lam = _nan_to_none(r["lam"])
        if (
            r["metric"] == "acc"
            and r["client"] == MEAN
            and r["domain"] == ALL
            and int(r["round"]) == TEST_ROUND
            and _clean(lam)
        ):
            near = is_near_chance(float(r["value"]), num_classes, rule)
            out.append(key.row("flag_near_chance", float(near), width=r["width"], lam=lam))
    return out
