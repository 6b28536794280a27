"""The report command end to end: which figures exist, skips with reasons, reruns, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from splitmix.cli import main as cli_main
from splitmix.errors import ConfigError
from splitmix.report.build import make_report, parse_formats
from splitmix.report.figures import BUILDERS

from .synthetic import at_specs, main_specs, variant_specs, write_runs

GLOB = "results/**/eval.csv"
ALL_KINDS = set(BUILDERS)


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Every kind of run: main grid, AT (FedAvg per lambda + dual BN), budget/participation/BN."""
    root = tmp_path_factory.mktemp("full")
    specs = main_specs(("digits",), seeds=(1, 2), robust=True) + at_specs("digits")
    specs += variant_specs("digits", seeds=(1,))
    return root, write_runs(root, specs)


@pytest.fixture(scope="module")
def full_report(full):
    root, _ = full
    out = root / "figures"
    report = make_report(str(root / GLOB), out, ("png",))
    return root, out, report


def _kind(name: str) -> str:
    return next(k for k in sorted(ALL_KINDS, key=len, reverse=True) if name.startswith(k))


def test_every_figure_kind_is_made_when_its_rows_exist(full_report):
    _, out, report = full_report
    made = {_kind(name) for name, _, _ in report.made}
    assert made == ALL_KINDS, report.skipped
    for name, files, caption in report.made:
        assert [p.name for p in files] == [f"{name}.png"]
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
        assert caption and "[" in caption  # captions name units
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["figures"]] == [n for n, _, _ in report.made]
    assert all(f["caption"] for f in manifest["figures"])
    assert manifest["tables"][0]["files"] == ["table1.csv", "table1.md", "table1.tex"]
    assert not list(out.glob(".*.tmp"))  # no temporary file is left behind


def test_pdf_output_is_a_pdf(full, tmp_path):
    root, _ = full
    report = make_report(str(root / GLOB), tmp_path, ("png", "pdf"), only=["flops_accuracy"])
    (name, files, _) = report.made[0]
    assert sorted(p.suffix for p in files) == [".pdf", ".png"]
    assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")


def test_rerun_gives_identical_tables_and_rebuilds_a_deleted_figure(full, tmp_path):
    root, _ = full
    kinds = ["flops_accuracy", "bn_ablation"]
    first = make_report(str(root / GLOB), tmp_path, ("png",), only=kinds)
    tables = {p.name: p.read_bytes() for p in first.tables}
    figure = tmp_path / f"{first.made[0][0]}.png"
    figure.unlink()
    second = make_report(str(root / GLOB), tmp_path, ("png",), only=kinds)
    assert {p.name: p.read_bytes() for p in second.tables} == tables
    assert figure.is_file() and figure.stat().st_size > 0
    assert [m[0] for m in second.made] == [m[0] for m in first.made]


def test_missing_rows_skip_their_figures_with_reasons(tmp_path, capsys):
    # main grid only, no run.json, no PGD rows: no robustness or variant figures
    specs = main_specs(("digits",), seeds=(1,))
    for s in specs:
        s.record = False
    write_runs(tmp_path, specs)
    out = tmp_path / "figs"
    with pytest.raises(SystemExit) as exc:
        cli_main(["report", "--rows", str(tmp_path / GLOB), "--out", str(out), "--formats", "png"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    for kind in ("convergence", "per_domain", "client_stats", "flops_accuracy"):
        assert f"made    {kind}_digits_feature (png)" in printed
    assert "skipped ra_sa: no robust_acc rows" in printed
    assert "skipped joint: no robust_acc rows" in printed
    for kind, col in (("budget_distribution", "budgets"), ("participation", "participation")):
        assert f"skipped {kind}: no run.json config ({col})" in printed
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert {s["name"] for s in skipped} >= {"ra_sa", "joint", "budget_distribution"}
    assert not list(out.glob("ra_sa*"))


def test_single_domain_task_skips_the_per_domain_figure(tmp_path):
    write_runs(tmp_path, main_specs(("cifar10",), seeds=(1,)))
    report = make_report(str(tmp_path / GLOB), tmp_path / "f", ("png",), only=["per_domain"])
    assert report.made == []
    assert report.skipped == [("per_domain_cifar10_iid", "cifar10/iid has one domain (cifar10)")]


def test_a_figure_no_longer_supported_is_removed(tmp_path):
    specs = main_specs(("digits",), seeds=(1,)) + variant_specs("digits", seeds=(1,))
    write_runs(tmp_path, specs)
    out = tmp_path / "f"
    make_report(str(tmp_path / GLOB), out, ("png",), only=["participation"])
    stale = out / "participation_digits_feature.png"
    assert stale.is_file()
    for path in (tmp_path / "results").rglob("*_pr*/seed1/eval.csv"):
        path.unlink()  # the participation runs are gone
    report = make_report(str(tmp_path / GLOB), out, ("png",), only=["participation"])
    assert not stale.exists()
    assert report.skipped and "participation" in report.skipped[0][1]


def test_methods_option_selects_table_columns(full, tmp_path):
    root, _ = full
    report = make_report(
        str(root / GLOB), tmp_path, ("png",), methods=["fedavg_x*", "splitmix"], only=["ra_sa"]
    )
    table = pd.read_csv(tmp_path / "table1.csv")
    assert set(table["column"]) == {"fedavg", "splitmix"}
    assert report.excluded == []
    with pytest.raises(ConfigError, match="matches none"):
        make_report(str(root / GLOB), tmp_path, ("png",), methods=["nope*"])


def test_bad_formats_are_config_errors():
    assert parse_formats("PNG, pdf") == ("png", "pdf")
    with pytest.raises(ConfigError, match="--formats 'jpg'"):
        parse_formats("jpg")


def test_pgd_rows_without_adversarial_training_give_no_robustness_figures(tmp_path):
    # the evaluation attacks every model by default: PGD rows alone do not make a run AT
    write_runs(tmp_path, main_specs(("digits",), seeds=(1,), robust=True))
    report = make_report(str(tmp_path / GLOB), tmp_path / "f", ("png",), only=["ra_sa", "joint"])
    assert report.made == []
    assert report.skipped == [
        ("ra_sa", "no adversarially trained run with robust_acc rows"),
        ("joint", "needs a dual-BN (AT) run evaluated at >= 2 widths"),
    ]
    table = pd.read_csv(tmp_path / "f" / "table1.csv")
    assert set(table["column"]) == {"fedavg", "sheterofl", "splitmix"}


def test_latency_figure_names_its_machine_and_is_skipped_without_latency_rows(tmp_path):
    specs = main_specs(("digits",), seeds=(1,))
    write_runs(tmp_path / "with", specs)
    report = make_report(str(tmp_path / "with" / GLOB), tmp_path / "f", ("png",),
                         only=["latency_accuracy"])  # fmt: skip
    (name, _, caption) = report.made[0]
    assert name == "latency_accuracy_digits_feature"
    assert "latency at batch 1 [ms per image]" in caption
    assert "measured on Test CPU, 2 cores (cpu, 1 thread)" in caption
    rows = write_runs(tmp_path / "without", specs)
    for path in (tmp_path / "without" / "results").rglob("eval.csv"):
        df = pd.read_csv(path)
        df[~df["metric"].str.startswith("latency")].to_csv(path, index=False)
    assert rows["metric"].str.startswith("latency").any()
    report = make_report(str(tmp_path / "without" / GLOB), tmp_path / "g", ("png",),
                         only=["latency_accuracy"])  # fmt: skip
    assert report.made == []
    assert report.skipped == [
        ("latency_accuracy", "needs test acc and latency_b1 rows of non-AT runs")
    ]
