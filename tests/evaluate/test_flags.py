"""Under-training flags on synthetic learning curves: the numbers by hand, then the rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from splitmix.errors import ConfigError, DataError
from splitmix.evaluate.flags import (
    FlagRule,
    flag_rows,
    is_near_chance,
    is_rising,
    rise_margin,
    val_rise,
    widest_curve,
)
from splitmix.evaluate.rows import RunKey, read_rows, to_frame, write_rows

KEY = RunKey("digits-mini", "feature", "splitmix", "splitmix", 1)
RULE = FlagRule()  # window 3, rise 0.02, chance margin 0.05


def _saturating(n: int, top: float = 0.9, rate: float = 1.0) -> list[float]:
    return [top * (1 - math.exp(-rate * (i + 1))) for i in range(n)]


def test_rise_is_best_of_last_k_minus_best_of_k_before():
    curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # last 3: 0.6 0.7 0.8 (best 0.8); the 3 before: 0.3 0.4 0.5 (best 0.5)
    assert val_rise(curve, 3) == pytest.approx(0.3)
    # a dip at the end does not hide a gain: best of (0.9, 0.5) vs best of (0.4, 0.45)
    assert val_rise([0.1, 0.4, 0.45, 0.9, 0.5], 2) == pytest.approx(0.45)
    # a window longer than half the curve shrinks to n // 2: k = 1 here, 0.6 - 0.52
    assert val_rise([0.5, 0.52, 0.6], 3) == pytest.approx(0.08)
    assert val_rise([0.5], 3) is None and val_rise([], 3) is None


def test_rising_curve_is_flagged_and_plateau_is_not():
    rising = list(np.linspace(0.2, 0.7, 10))  # +5.6 points per validation
    assert is_rising(rising, RULE)
    plateau = _saturating(16)  # within 1e-4 of 0.9 for its last 6 validations
    assert val_rise(plateau, 3) == pytest.approx(0.9 * (math.exp(-13) - math.exp(-16)))
    assert not is_rising(plateau, RULE)
    # the same plateau cut at its 4th validation was still gaining ~6 points
    assert is_rising(plateau[:4], RULE)


def test_noisy_flat_curve_is_not_flagged_but_a_slow_climb_under_noise_is():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.008, 0.008, size=12)  # +-0.8 points: best-of-3 can differ <= 1.6
    flat = list(0.85 + noise)
    assert abs(val_rise(flat, 3)) <= 0.016
    assert not is_rising(flat, RULE)
    climb = list(0.6 + 0.02 * np.arange(12) + noise)  # 6 points over 3 validations, plus noise
    assert val_rise(climb, 3) > 0.06 - 0.016
    assert is_rising(climb, RULE)


def test_margin_decides_at_the_boundary():
    curve = [0.5, 0.5, 0.5, 0.53, 0.53, 0.53]  # rise 0.03
    assert is_rising(curve, FlagRule(rise=0.02))
    assert not is_rising(curve, FlagRule(rise=0.03))  # "more than" the margin
    assert is_rising([0.8], RULE)  # one validation cannot show learning stopped


def test_near_chance_threshold_is_one_over_classes_plus_margin():
    assert is_near_chance(0.15, 10, RULE)  # exactly 1/10 + 0.05
    assert not is_near_chance(0.151, 10, RULE)
    assert is_near_chance(0.12, 10, RULE)
    assert not is_near_chance(0.40, 10, RULE)
    assert is_near_chance(0.55, 2, RULE) and not is_near_chance(0.56, 2, RULE)


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"window": 0}, "--flag-window 0"), ({"rise": -0.1}, "--flag-rise"),
     ({"chance_margin": 1.5}, "--flag-chance")],
)  # fmt: skip
def test_bad_rule_parameters_are_one_line_config_errors(kwargs, flag):
    with pytest.raises(ConfigError, match=flag) as exc:
        FlagRule(**kwargs)
    assert "\n" not in str(exc.value)


def _run_rows(curves: dict[float, list[float]], accs: dict[float, float], lam=None) -> list[dict]:
    rows = []
    for width, curve in curves.items():
        for r, v in enumerate(curve):
            rows.append(KEY.row("val_acc", v, round=2 * r, width=width, lam=lam, client="mean",
                                domain="all"))  # fmt: skip
            # a robust-BN curve of a dual-BN model must not be read as the clean one
            if lam is not None:
                rows.append(KEY.row("val_acc", 0.0, round=2 * r, width=width, lam=1.0,
                                    client="mean", domain="all"))  # fmt: skip
    for width, acc in accs.items():
        rows.append(KEY.row("acc", acc, width=width, lam=lam, client="mean", domain="all"))
        rows.append(KEY.row("acc", acc / 2, width=width, lam=lam, client="m-0", domain="m"))
    return rows


def test_flag_rows_judge_the_widest_clean_curve_and_every_clean_accuracy(tmp_path):
    curves = {0.125: list(np.linspace(0.1, 0.5, 8)), 1.0: _saturating(8, top=0.8, rate=2.0)}
    accs = {0.125: 0.13, 1.0: 0.79}
    rows = _run_rows(curves, accs, lam=0.0)
    assert widest_curve(rows) == (1.0, curves[1.0])
    out = to_frame(flag_rows(KEY, rows, num_classes=10, rule=RULE))
    got = {(r.metric, r.width): r.value for r in out.itertuples() if not math.isnan(r.width)}
    expected_rise = max(curves[1.0][5:]) - max(curves[1.0][2:5])
    assert got[("val_rise", 1.0)] == pytest.approx(expected_rise)
    assert got[("flag_rising", 1.0)] == 0.0  # only the widest width decides (x1/8 rises)
    assert got[("flag_near_chance", 0.125)] == 1.0  # 13% <= 10% + 5
    assert got[("flag_near_chance", 1.0)] == 0.0
    run_level = out[out["width"].isna()].set_index("metric")["value"]
    assert run_level.to_dict() == pytest.approx(
        {
            "flag_window": 3,
            "flag_rise_margin": 0.02,  # no validation size given: the fixed margin
            "flag_noise_z": 2.0,
            "flag_chance_margin": 0.05,
            "chance_acc": 0.1,
        }
    )
    assert (out[out["metric"] == "flag_near_chance"]["lam"] == 0.0).all()
    # the flags survive the schema on write and read
    back = read_rows(write_rows(out, tmp_path / "eval.csv"))
    pd.testing.assert_frame_equal(back, out)


def test_a_run_with_one_validation_is_flagged_without_a_rise_row():
    rows = _run_rows({0.5: [0.6]}, {0.5: 0.6})
    out = to_frame(flag_rows(KEY, rows, num_classes=10, rule=RULE))
    assert "val_rise" not in set(out["metric"])
    assert out.set_index("metric")["value"]["flag_rising"] == 1.0


def test_a_flag_that_is_not_0_or_1_is_refused_on_read(tmp_path):
    out = to_frame(flag_rows(KEY, _run_rows({1.0: [0.5, 0.6]}, {1.0: 0.6}), 10, RULE))
    path = write_rows(out, tmp_path / "eval.csv")
    text = path.read_text().replace(",flag_rising,1.0,flag", ",flag_rising,0.5,flag")
    assert text != path.read_text()
    path.write_text(text)
    with pytest.raises(DataError, match=r"row \d+ metric 'flag_rising' = 0.5 is not a flag \(0"):
        read_rows(path)


def test_the_rise_margin_grows_to_the_noise_of_a_small_validation_set():
    """A 2.3-point rise ending at 90%: within 2 standard errors of one validation of 600 images
    (2 * sqrt(0.9 * 0.1 / 600) = 2.45 points), so not rising; on 6,000 images (0.77 points) the
    fixed 2-point margin decides, and 2.3 > 2 is rising."""
    curve = [0.80, 0.85, 0.877, 0.875, 0.873, 0.898, 0.9, 0.9]
    assert val_rise(curve, 3) == pytest.approx(0.023)
    assert rise_margin(curve, RULE, 600) == pytest.approx(2 * math.sqrt(0.9 * 0.1 / 600))
    assert not is_rising(curve, RULE, n_val=600)
    assert rise_margin(curve, RULE, 6000) == pytest.approx(0.02)
    assert is_rising(curve, RULE, n_val=6000)
    assert is_rising(curve, RULE)  # no size known: the fixed margin alone
    assert is_rising(curve, FlagRule(noise_z=0.0), n_val=600)  # z = 0 switches the noise off
    # a clearly climbing curve stays flagged on a small validation set
    assert is_rising([0.70, 0.75, 0.78, 0.80, 0.84, 0.86, 0.88, 0.90], RULE, n_val=600)


def test_flag_rows_record_the_margin_applied_to_the_run():
    curve = [0.80, 0.85, 0.877, 0.875, 0.873, 0.898, 0.9, 0.9]
    rows = _run_rows({1.0: curve}, {1.0: 0.9}, lam=None)
    out = to_frame(flag_rows(KEY, rows, num_classes=10, rule=RULE, n_val=600))
    run_level = out[out["width"].isna()].set_index("metric")["value"]
    assert run_level["flag_rise_margin"] == pytest.approx(2 * math.sqrt(0.09 / 600))
    assert out[out["metric"] == "flag_rising"]["value"].tolist() == [0.0]


def test_noise_z_out_of_range_is_one_line():
    with pytest.raises(
        ConfigError, match=r"--flag-noise -1\.0 must be a number of standard errors"
    ):
        FlagRule(noise_z=-1.0)
