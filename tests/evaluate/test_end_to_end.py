"""Train tiny runs on the bundled digits-mini with the real engine, then evaluate them.

Runs are shared per module (trained once, on demand). Test sets are cut to a few images per client
so that PGD at every width stays quick; the federation object is passed to both training and
evaluation, exactly as ``run_training(..., federation=)`` allows.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from splitmix.config import run_config_from_dict
from splitmix.data.clients import Federation
from splitmix.data.federation import build_federation
from splitmix.evaluate import cli
from splitmix.evaluate.rows import read_rows
from splitmix.evaluate.run import EvalOptions, evaluate_run, log_rows, restore_run
from splitmix.methods import algorithm_class
from splitmix.models import bn_mode, build_model
from splitmix.runfolder import read_record
from splitmix.training import run_training

from .test_cost import digit_macs

TEST_PER_CLIENT = 40
WIDTHS = (0.125, 0.25, 0.5, 1.0)
METHODS = {
    "splitmix": {"algorithm": "splitmix", "lr": 0.01},
    "fedavg": {"algorithm": "fedavg", "method_params": {"width": 0.125}},
    "heterofl": {"algorithm": "heterofl"},
    "sheterofl": {"algorithm": "sheterofl"},
    # one narrow base with dual BN, adversarially trained (docs/paper.md#adversarial)
    "splitmix-dual": {
        "algorithm": "splitmix",
        "lr": 0.01,
        "bn": "tracked",
        "budgets": "8-4",
        "adv": {"lam": 0.5},
        "rounds": 1,
    },
}


pytestmark = pytest.mark.usefixtures("one_thread")


def config(method: str, tmp: Path):
    return run_config_from_dict(
        {
            "dataset": "digits-mini",
            "split": "tiny",
            "method": method,
            "seed": 1,
            "data_root": str(tmp / "no-data"),  # bundled data needs no prepared cache
            "split_config": {"clients_per_domain": 2, "percent": 0.2, "val_ratio": 0.5},
            "rounds": 2,
            "threads": 1,
            **METHODS[method],
        }
    )


def _federation(cfg) -> Federation:
    fed = build_federation(cfg)
    for c in fed.clients:
        c.test_x = c.test_x[:TEST_PER_CLIENT].clone()
        c.test_y = c.test_y[:TEST_PER_CLIENT].clone()
    return fed


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Federation:
    """The federation of every run with the default budgets 8-4-2-1."""
    return _federation(config("splitmix", tmp_path_factory.mktemp("fed")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, federation):
    """method -> (run directory, its federation), each trained once for this module."""
    cache: dict[str, tuple[Path, Federation]] = {}
    base = tmp_path_factory.mktemp("runs")

    def get(method: str) -> tuple[Path, Federation]:
        if method not in cache:
            cfg = config(method, base)
            fed = federation if cfg.budgets == "8-4-2-1" else _federation(cfg)
            out = base / method
            run_training(cfg, out, federation=fed, progress=False)
            cache[method] = (out, fed)
        return cache[method]

    return get


def _state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _expected_bytes(method: str, budget: float) -> int:
    """Bytes one client exchanges per round in each direction, from freshly built models: Split-
    Mix sends its budget/atom bases of width 1/8 whole; HeteroFL the width-R prefix of every
    tensor, which holds exactly the tensors of a dense model of width R (batch BN: no buffers)."""
    if method == "splitmix":
        return round(budget / 0.125) * _state_bytes(build_model("digit", width=0.125))
    return _state_bytes(build_model("digit", width=budget))


@pytest.mark.parametrize("method", ["splitmix", "heterofl"])
def test_communication_rows_equal_the_exchanged_tensors(trained, method):
    run_dir, federation = trained(method)
    run = restore_run(run_dir, federation=federation)
    df = pd.DataFrame(log_rows(run))
    best = run.best_round
    for c in federation.clients:
        per_round = _expected_bytes(method, c.budget)
        got = df[df["client"] == c.name].set_index("metric")["value"]
        for d in ("down", "up"):
            assert got[f"bytes_{d}_per_round"] == per_round
            assert got[f"bytes_{d}_total"] == 2 * per_round  # every client, both rounds
            assert got[f"bytes_{d}_total_to_best"] == (best + 1) * per_round
    mean = df[(df["client"] == "mean") & (df["domain"] == "all")].set_index("metric")["value"]
    expected = [_expected_bytes(method, c.budget) for c in federation.clients]
    assert mean["bytes_up_per_round"] == pytest.approx(sum(expected) / len(expected))


def _check_run_rows(df: pd.DataFrame, widths: tuple[float, ...], federation: Federation) -> None:
    names = {c.name for c in federation.clients}
    domains = {c.domain for c in federation.clients}
    for w in widths:
        for metric in ("acc", "robust_acc"):
            sel = df[(df["metric"] == metric) & (df["width"] == w)]
            assert names <= set(sel["client"]), (metric, w)
            means = sel[sel["client"] == "mean"]
            assert set(means["domain"]) == domains | {"all"}
            per_client = sel[sel["client"] != "mean"]["value"]
            assert per_client.between(0, 1).all()
            assert means.set_index("domain")["value"]["all"] == pytest.approx(per_client.mean())
        for metric in ("macs", "flops", "params", "state_numel", "model_bytes"):
            assert len(df[(df["metric"] == metric) & (df["width"] == w)]) == 1
        assert sorted(df[(df["metric"] == "val_acc") & (df["width"] == w)]["round"]) == [0, 1]
    acc = df[df["metric"] == "acc"].set_index(["width", "client", "domain"])["value"]
    robust = df[df["metric"] == "robust_acc"].set_index(["width", "client", "domain"])["value"]
    assert (robust <= acc + 1e-12).all()  # robust <= standard, per client and width
    assert set(df[df["metric"] == "bytes_up_total"]["client"]) == names | {"mean"}
    for metric in ("best_round", "eval_seconds", "run_seconds"):
        assert len(df[df["metric"] == metric]) == 1
    pgd = df[df["metric"].str.startswith("pgd_")].set_index("metric")["value"]
    assert pgd.to_dict() == pytest.approx(  # the paper's attack unless told otherwise
        {"pgd_eps": 8 / 255, "pgd_steps": 7, "pgd_step_size": (10 / 255) / 7}
    )
    assert df["lam"].isna().all()  # no dual BN in these runs
    _check_flags(df)


def _check_flags(df: pd.DataFrame) -> None:
    """The flag rows restate the run's own rows under the default rule: two validations, so the
    rise is the second minus the first at the widest width, judged against the margin recorded
    for the run (2 points, or 2 standard errors of one validation of its validation images when
    larger); chance is 1/10 on digits."""
    widest = df[df["metric"] == "val_acc"]["width"].max()
    curve = df[(df["metric"] == "val_acc") & (df["width"] == widest)].sort_values("round")
    rise = curve["value"].iloc[1] - curve["value"].iloc[0]
    flags = df[df["metric"].isin(["val_rise", "flag_rising"])].set_index("metric")
    assert flags["width"].tolist() == [widest, widest]
    assert flags.loc["val_rise", "value"] == pytest.approx(rise)
    margin = df[df["metric"] == "flag_rise_margin"]["value"].item()
    assert margin >= 0.02  # never below the fixed margin (tests/evaluate/test_flags.py: the rest)
    assert flags.loc["flag_rising", "value"] == float(rise > margin)
    acc = df[(df["metric"] == "acc") & (df["client"] == "mean") & (df["domain"] == "all")]
    near = df[df["metric"] == "flag_near_chance"].set_index("width")["value"]
    expected = {w: float(a <= 0.15) for w, a in zip(acc["width"], acc["value"], strict=True)}
    assert near.to_dict() == expected
    assert df[df["metric"] == "chance_acc"]["value"].tolist() == [0.1]


@pytest.mark.parametrize("method, per_width", [("fedavg", True), ("splitmix", False)])
def test_run_record_says_whether_each_width_is_its_own_run(trained, method, per_width):
    run_dir, _ = trained(method)
    record = read_record(run_dir)
    # the capability the report reads instead of the method's name, beside describe()'s facts
    assert record["algorithm"]["one_run_per_width"] is per_width
    declared = algorithm_class(METHODS[method]["algorithm"]).params
    given = METHODS[method].get("method_params", {})
    assert record["config"]["method_params"] == {**declared, **given}  # defaults recorded too


@pytest.mark.slow
@pytest.mark.parametrize("method", ["splitmix", "fedavg", "heterofl", "sheterofl"])
def test_evaluate_every_method_end_to_end(trained, method):
    run_dir, federation = trained(method)
    evaluate_run(run_dir, EvalOptions(threads=1), federation=federation)
    df = read_rows(run_dir / "eval.csv")  # the schema check passes on what was written
    widths = (0.125,) if method == "fedavg" else WIDTHS
    _check_run_rows(df, widths, federation)
    macs = df[df["metric"] == "macs"].set_index("width")["value"]
    if method == "splitmix":  # ensembles of w / atom bases
        assert all(macs[w] == (w / 0.125) * macs[0.125] for w in WIDTHS)
    else:  # the width-w (sub)network of the DigitModel
        assert all(macs[w] == digit_macs(w) for w in widths)
    assert set(df["method"]) == {method} and set(df["seed"]) == {1}


@pytest.mark.slow
def test_dual_bn_rows_per_lambda_match_clean_and_noise_models(trained):
    run_dir, federation = trained("splitmix-dual")
    df = evaluate_run(run_dir, EvalOptions(threads=1), federation=federation)
    acc = df[df["metric"] == "acc"]
    assert sorted(set(acc["lam"])) == [0.0, 0.2, 0.5, 0.8, 1.0]  # adv.test_lams
    assert set(acc["width"]) == {0.125, 0.25}
    run = restore_run(run_dir, federation=federation)
    for lam, mode in ((0.0, "clean"), (1.0, "noise")):
        model = run.algorithm.assemble(0.25, None, None).eval()
        with bn_mode(model, mode), torch.no_grad():
            for c in federation.clients:
                want = (model(c.test_x.float() / 255).argmax(1) == c.test_y).float().mean()
                got = acc[(acc["width"] == 0.25) & (acc["lam"] == lam) & (acc["client"] == c.name)]
                assert got["value"].item() == pytest.approx(want.item())
    curves = df[df["metric"] == "val_robust_acc"]
    assert len(curves) == 2 and set(curves["lam"]) == {1.0}  # 1 round x 2 widths


@pytest.mark.slow
def test_cli_writes_rows_and_a_summary(trained, capsys, tmp_path):
    run_dir, _ = trained("fedavg")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "rows.csv"
    args = parser.parse_args(
        ["evaluate", "--run", str(run_dir), "--no-attack", "--out", str(out), "--no-progress",
         "--flag-window", "1", "--flag-rise", "0.5", "--flag-chance", "0.9"]
    )  # fmt: skip
    assert args.func(args) == 0
    df = read_rows(out)
    assert "robust_acc" not in set(df["metric"]) and "acc" in set(df["metric"])
    # the rule given is the rule recorded and applied: any accuracy <= 0.1 + 0.9 is near chance
    rule = df[df["metric"].str.startswith("flag_") & df["width"].isna()].set_index("metric")
    assert rule["value"].to_dict() == {
        "flag_window": 1.0, "flag_rise_margin": 0.5, "flag_noise_z": 2.0, "flag_chance_margin": 0.9
    }  # fmt: skip
    assert (df[df["metric"] == "flag_near_chance"]["value"] == 1.0).all()
    assert f"to {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_attacks_with_the_pgd_it_is_given(trained, tmp_path):
    run_dir, _ = trained("fedavg")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "rows.csv"
    flags = ["--pgd-steps", "2", "--pgd-eps", "4/255", "--out", str(out), "--no-progress"]
    args = parser.parse_args(["evaluate", "--run", str(run_dir), *flags])
    assert args.func(args) == 0
    df = read_rows(out)
    pgd = df[df["metric"].str.startswith("pgd_")].set_index("metric")["value"]
    # step by the original's rule: min(1.25 eps, eps + 4/255) / steps = (5/255) / 2
    assert pgd.to_dict() == pytest.approx(
        {"pgd_eps": 4 / 255, "pgd_steps": 2, "pgd_step_size": 2.5 / 255}
    )
    assert "robust_acc" in set(df["metric"])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pgd-steps", "0"], "--pgd-steps 0 must be >= 1"),
        (["--pgd-eps", "eight"], "--pgd-eps 'eight' is not a number or a fraction like 8/255"),
        (["--pgd-eps", "8/0"], "--pgd-eps '8/0' is not a number"),
        (["--pgd-eps", "300/255"], "--pgd-eps '300/255' is outside"),
        (["--pgd-step-size", "-1"], "--pgd-step-size '-1' is outside"),
    ],
)
def test_cli_rejects_bad_pgd_settings_in_one_line(flags, message):
    from splitmix.errors import ConfigError

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--run", "x", *flags])
    with pytest.raises(ConfigError, match=re.escape(message)):
        cli.pgd_settings(args)


def test_cli_rejects_a_bad_width_list():
    from splitmix.errors import ConfigError

    with pytest.raises(ConfigError, match="--widths '0.5,x' is not a comma-separated list"):
        cli.parse_floats("0.5,x", "widths")


def test_cli_rejects_a_latency_batch_below_one(tmp_path):
    from splitmix.errors import ConfigError

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--run", str(tmp_path), "--latency-batch", "0"])
    with pytest.raises(ConfigError, match=re.escape("--latency-batch 0 must be >= 1, e.g. 32")):
        cli.run(args)


def test_deployment_rows_of_every_width(trained):
    """Storage and latency rows: the exported file holds the width's state (plus a few kB of
    TorchScript code), serving every width stores what the method's hook counts, and every
    latency is a positive time measured with the rows' thread count."""
    run_dir, federation = trained("splitmix")
    df = evaluate_run(run_dir, EvalOptions(attack=False), federation=federation)
    run = restore_run(run_dir, federation=federation)
    model = df[(df["round"] == -1) & (df["client"] == "")]
    for w in WIDTHS:
        at = model[model["width"] == w].set_index("metric")["value"]
        assert 0 < at["export_bytes"] - at["model_bytes"] < 200_000, w
        for name in ("latency_b1", "latency_bn", "latency_b1_plain", "latency_bn_plain"):
            assert 0 < at[name] < 1.0, (w, name)
    level = model[model["width"].isna()].set_index("metric")["value"]
    alg = run.algorithm
    assert level["serve_all_bytes"] == alg.storage_nbytes(alg.deploy_widths())
    assert (
        level["serve_all_bytes"]
        == model[model["width"] == 1.0].set_index("metric").loc["model_bytes", "value"]
    )  # the x1 model is all eight bases
    assert (level["latency_batch"], level["latency_threads"]) == (32, 1)
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["device"] == "cpu" and record["threads"] == 1 and record["machine"]
