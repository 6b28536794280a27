"""The DAG without training: lint, the paper grid's dry run, config errors, data checks."""

from __future__ import annotations

import re

import pytest

from splitmix.experiment import iter_runs, load_experiment, resolve_run

from . import (
    REPO,
    job_counts,
    jobs_by_rule,
    load_yaml,
    snakemake,
    tiny_config,
    write_config,
)

TABLE1 = ["fedavg_x0.125", "fedavg_x0.25", "fedavg_x0.5", "fedavg_x1", "heterofl", "sheterofl",
          "splitmix"]  # fmt: skip


def test_lint_is_clean(tmp_path):
    """Every rule names its software (workflow/envs/splitmix.yaml, used with --sdm conda)."""
    proc = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config" / "config.yaml"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not re.findall(r"^Lints for", proc.stdout, flags=re.M), proc.stdout[-3000:]
    assert "your workflow is in a good condition" in proc.stdout


def test_paper_dry_run_lists_every_run_and_names_missing_data(tmp_path):
    paper = REPO / "config" / "paper.yaml"
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(paper))
    assert proc.returncode == 0, proc.stdout[-3000:]
    jobs = jobs_by_rule(proc.stdout)

    trains = {(j["dataset"], j["split"], j["method"], int(j["seed"])) for j in jobs["train"]}
    exp = {k: v for k, v in load_yaml(paper).items() if k != "workflow"}
    assert trains == set(iter_runs(exp))
    assert len(jobs["train"]) == len(trains) == len(jobs["evaluate"])
    per_dataset = {
        d: sum(1 for t in trains if t[0] == d) for d in ("digits", "domainnet", "cifar10")
    }
    # digits: Table 1 (7) + AT (6 FedAvg lambdas + 2 dual-BN) + 7 budget distributions x 3
    # methods + 6 participation rates x 2 methods + 2 x 2 x 3 ablation = 60
    # cifar10: 31 for the Split-Mix paper, 10 for the other papers' claims (task class-p10)
    assert per_dataset == {"digits": 60, "domainnet": 16, "cifar10": 41}
    for dataset, split in [("digits", "feature"), ("domainnet", "feature"), ("cifar10", "iid"),
                           ("cifar10", "iid50"), ("cifar10", "class")]:  # fmt: skip
        assert {m for d, s, m, _ in trains if (d, s) == (dataset, split)} >= set(TABLE1)
    ablation = {m for _, _, m, _ in trains if "_abl_" in m}
    assert len(ablation) == 12  # rescale_init x rescale_layer x {batch, tracked, local}

    # no data here: one data job per (dataset, domain), each naming the command that prepares it
    assert job_counts(proc.stdout)["data"] == 5 + 6 + 1
    assert job_counts(proc.stdout)["train"] == len(trains)
    assert "python -m splitmix data prepare domainnet --domain sketch" in proc.stdout
    assert "prepared data folder(s) missing" in proc.stdout
    # a --configfile replaces the default; Snakemake's "is extended by" note would say otherwise
    assert "config/config.yaml" not in proc.stdout

    # each job reads its run's resolved values from a file named by their hash, which the
    # training CLI resolves back to exactly that run
    files = sorted((tmp_path / "results" / "config" / "runs").glob("*.yaml"))
    assert {f.stem for f in files} == {
        resolve_run(exp, *key, check_device=False).config_hash() for key in trains
    }
    for f in files:
        one = load_experiment(f)
        (key,) = iter_runs(one)
        assert key in trains and resolve_run(one, *key, check_device=False).config_hash() == f.stem


def test_missing_data_fails_before_any_training(tmp_path):
    cfg = tiny_config(name="nodata")
    cfg["data_root"] = str(tmp_path / "empty-data-root")
    cfg["datasets"] = {"digits": cfg["datasets"].pop("digits-mini")}
    cfg["runs"] = [{"dataset": "digits", "split": "tiny", "methods": ["fedavg_x0.125"]}]
    proc = snakemake(
        tmp_path, "--cores", "2", "--configfile", str(write_config(tmp_path / "c.yaml", cfg))
    )
    assert proc.returncode != 0
    assert "is not prepared; run: python -m splitmix data prepare digits --domain" in proc.stdout
    assert f"--root {tmp_path / 'empty-data-root'}" in proc.stdout
    assert not (tmp_path / "results" / "digits").exists()  # no training job started
    assert "train" not in jobs_by_rule(proc.stdout)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # unknown key: named with its path, and the allowed keys listed
        (lambda c: c["training"].update(thread=1),
         r"at training: Additional properties are not allowed \('thread' was unexpected\); "
         r"allowed keys: .*threads"),
        # bad enum
        (lambda c: c["training"].update(lr_schedule="cosine"),
         r"at training.lr_schedule: 'cosine' is not one of \['none', 'cos', 'multistep'\]"),
        # numeric range, deep in a split
        (lambda c: c["datasets"]["digits-mini"]["splits"]["tiny"].update(percent=1.5),
         r"at datasets.digits-mini.splits.tiny.percent: 1.5 is greater than the maximum of 1"),
        # algorithms come from the registry (baselines/ is discovered), not from a fixed list
        (lambda c: c["methods"]["heterofl"].update(algorithm="heterofll"),
         r"at methods.heterofl.algorithm: 'heterofll' is not registered; allowed: "
         r"(\w+, )*fedavg, (\w+, )*heterofl, (\w+, )*splitmix"),
        (lambda c: c["methods"]["fedavg_x1"].update(params={"widht": 1.0}),
         r"at methods.fedavg_x1.params: unknown parameter\(s\) widht for fedavg; allowed: width"),
        (lambda c: c["workflow"].update(start_first="fedavg_x1"),
         r"at workflow.start_first: 'fedavg_x1' is not of type 'array'"),
    ],
)  # fmt: skip
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, edit, expected):
    cfg = tiny_config()
    edit(cfg)
    proc = snakemake(
        tmp_path, "--cores", "1", "--configfile", str(write_config(tmp_path / "c.yaml", cfg))
    )
    assert proc.returncode != 0
    assert re.search(expected, proc.stdout), proc.stdout[-2000:]
    assert "Job stats" not in proc.stdout  # failed while parsing: no DAG, no job
    assert not (tmp_path / "results" / "digits-mini").exists()


def test_configfile_replaces_the_default_grid(tmp_path):
    """--configfile must not be deep-merged into config/config.yaml (Snakemake's default): the
    quick default's cifar10-mini runs and extra methods would leak into every other grid."""
    proc = snakemake(
        tmp_path, "-n", "--cores", "1", "--configfile", str(REPO / "config" / "test.yaml")
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    methods = {j["method"] for j in jobs_by_rule(proc.stdout)["train"]}
    own = set(load_experiment(REPO / "config" / "test.yaml")["methods"])  # its own methods
    assert set(TABLE1) <= methods == own
    assert "cifar10-mini" not in proc.stdout


def test_default_profile_is_picked_up_from_the_repo_root():
    """`snakemake` with no --cores works from the repo root because the default profile is found.

    Snakemake looks for `profiles/default` beside the Snakefile (and in the working directory);
    for the root Snakefile that is `profiles/default`, which points at workflow/profiles.
    """
    proc = snakemake(REPO, "-n", "--configfile", str(REPO / "config" / "test.yaml"), profile=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Using workflow specific profile profiles/default" in proc.stdout, (
        "the default profile was not found: link it with `ln -s workflow/profiles profiles`"
    )


def test_schema_covers_exactly_the_run_config_fields():
    """The schema closes every object, so it must list every field the library accepts (and no
    other): a new RunConfig field without a schema entry would be rejected before any job."""
    import dataclasses

    from splitmix.config import AdvConfig, RunConfig, SplitConfig
    from splitmix.experiment import RESERVED

    schema = load_yaml(REPO / "workflow" / "schemas" / "config.schema.yaml")["$defs"]
    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(RESERVED)
    assert set(schema["training"]["properties"]) == fields
    assert set(schema["split"]["properties"]) == {f.name for f in dataclasses.fields(SplitConfig)}
    assert set(schema["adv"]["properties"]) == {f.name for f in dataclasses.fields(AdvConfig)}


def test_quick_default_grid_and_attack_only_where_trained_adversarially(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config" / "config.yaml"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    trains = {(j["dataset"], j["method"], j["seed"]) for j in jobs_by_rule(proc.stdout)["train"]}
    # digits-mini only (CIFAR-10 is the opt-in config/cifar10-mini.yaml): the 3 runs the seed-
    # spread claims compare on seeds 1 and 2, everything else on seed 1
    assert {d for d, _, _ in trains} == {"digits-mini"}
    two_seeds = {"fedavg_x0.125", "sheterofl", "splitmix"}
    assert {(m, s) for _, m, s in trains if m in two_seeds} == {
        (m, s) for m in two_seeds for s in ("1", "2")
    }
    assert {m for _, m, s in trains if m not in two_seeds and s == "1"} == {
        "heterofl", "splitmix_dbn", "fedavg_x0.125_at", "fedavg_x0.25", "fedavg_x0.5",
        "fedavg_x1", "splitmix_budget8-1-1-1", "splitmix_budget-ln", "depthfl", "fedrolex",
        "fjord", "fiarse", "scalefl",
    }  # fmt: skip
    assert len(trains) == 3 * 2 + 13
    assert set(TABLE1) <= {m for _, m, _ in trains}
    attacked = set(
        re.findall(r"evaluate --run results/\S+/(\S+)/seed\d+ --out \S+ --attack", proc.stdout)
    )
    spared = set(
        re.findall(r"evaluate --run results/\S+/(\S+)/seed\d+ --out \S+ --no-attack", proc.stdout)
    )
    assert attacked == {"splitmix_dbn", "fedavg_x0.125_at"}
    assert "splitmix" in spared and not attacked & spared
    # one attack for every attacked run: workflow.pgd (3 steps in the quick profile), eps 8/255
    pgd = set(re.findall(r"--attack (--pgd-steps \d+ --pgd-eps \S+)", proc.stdout))
    assert pgd == {f"--pgd-steps 3 --pgd-eps {8 / 255!r}"}
