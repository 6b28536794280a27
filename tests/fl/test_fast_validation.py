"""The engine validates on the fast path (``Algorithm.inference_model``: channels-last, Split-Mix's
fused ensembles) with the numbers of the plain path, within float tolerance."""

from __future__ import annotations

import pandas as pd
import pytest

from splitmix.fl.algorithm import Algorithm
from splitmix.training import run_training

from .toy import toy_config, toy_federation

pytestmark = pytest.mark.usefixtures("one_thread")


def _val_columns(out) -> pd.DataFrame:
    log = pd.read_csv(out / "log.csv")
    return log[[c for c in log.columns if c.startswith(("val_", "metric"))]]


@pytest.mark.parametrize(
    ("algorithm", "params", "training"),
    [
        ("splitmix", {"atom": 0.25}, {"budgets": "4-2-1"}),
        pytest.param("heterofl", {}, {"budgets": "4-2-1"}, marks=pytest.mark.slow),
        pytest.param(
            "splitmix", {"atom": 0.5, "rescale_init": False, "rescale_layer": False},
            {"budgets": "2-1", "bn": "tracked",
             "adv": {"lam": 0.5, "steps": 2, "eps": 0.03, "step_size": 0.02}},
            marks=pytest.mark.slow,
        ),
    ],
)  # fmt: skip
def test_fast_validation_matches_the_plain_models(
    tmp_path, monkeypatch, algorithm, params, training
):
    fed = toy_federation(num_clients=3, shape=(3, 28, 28), n_train=(40,), n_val=24)
    cfg = toy_config(
        algorithm=algorithm,
        method=algorithm,
        method_params=params,
        arch="digit",
        rounds=1,
        eval_every=1,
        **training,
    )
    fast = tmp_path / "fast"
    run_training(cfg, fast, federation=fed, progress=False)
    # the plain path: every method's hook returns the assembled model itself
    from splitmix.splitmix import SplitMix

    for cls in (Algorithm, SplitMix):
        monkeypatch.setattr(cls, "inference_model", lambda self, model: model)
    plain = tmp_path / "plain"
    again = toy_federation(num_clients=3, shape=(3, 28, 28), n_train=(40,), n_val=24)
    run_training(cfg, plain, federation=again, progress=False)
    got, want = _val_columns(fast), _val_columns(plain)
    assert list(got.columns) == list(want.columns)
    pd.testing.assert_frame_equal(got, want, rtol=1e-5, atol=1e-6)
