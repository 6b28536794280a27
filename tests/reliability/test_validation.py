"""One validation of a resolved run, for the CLI and the workflow alike.

Every bad value is refused before anything is written, with one line naming the key, the value
and what is allowed (exit status 2 from the CLI), whether it comes from ``--set`` or from the
config file; the workflow refuses the same values while parsing, before any job.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch
import yaml

from splitmix.cli import main
from splitmix.config import AdvConfig, RunConfig, SplitConfig, device_problem, validate_run
from splitmix.errors import ConfigError
from splitmix.experiment import RESERVED, iter_runs, load_experiment, resolve_run
from splitmix.schemas import SCHEMA_PATH, load_schema
from tests.workflow import REPO, TEST_CONFIG, snakemake, tiny_config, write_config

CPU_BUILD = not torch.backends.cuda.is_built()

# (method, --set item, key named in the message, value as the message shows it). The first
# sixteen are the cases of issue 12; the rest cover the other rules of the same validation.
BAD = [
    ("splitmix", "rounds=-3", "rounds", "-3 is less than the minimum of 1"),
    ("splitmix", "rounds=0", "rounds", "0 is less than the minimum of 1"),
    ("splitmix", "lr=fast", "lr", "'fast' is not of type 'number'"),
    ("splitmix", "lr=-0.1", "lr", "-0.1 is less than or equal to the minimum of 0"),
    ("splitmix", "batch_size=0", "batch_size", "0 is less than the minimum of 1"),
    ("splitmix", "rounds=ten", "rounds", "'ten' is not of type 'integer'"),
    ("splitmix", "threads=0", "threads", "0 is less than the minimum of 1"),
    ("splitmix", "eval_every=0", "eval_every", "0 is less than the minimum of 1"),
    ("splitmix", "checkpoint_every=0", "checkpoint_every", "0 is less than the minimum of 1"),
    ("splitmix", "test_batch_size=0", "test_batch_size", "0 is less than the minimum of 1"),
    ("splitmix", "adv.lam=2", "adv.lam", "2.0 is greater than the maximum of 1"),
    ("splitmix", "momentum=1.5", "momentum", "1.5 is greater than or equal to the maximum of 1"),
    ("splitmix", "local_epochs=0", "local_epochs", "0 is less than the minimum of 1"),
    ("splitmix", 'lr="0.1"', "lr", "'0.1' is not of type 'number'"),
    ("splitmix", "participation=50", "participation", "50 is more than the 6 clients"),
    ("splitmix", "device=cuda:999", "device", "'cuda:999' cannot be used"),
    ("splitmix", "participation=0", "participation", "0 is less than the minimum of 1"),
    ("splitmix", "adv.steps=abc", "adv.steps", "'abc' is not of type 'integer'"),
    ("splitmix", "adv.eps=fast", "adv.eps", "'fast' is not of type 'number'"),
    ("splitmix", "split_config.percent=0", "split_config.percent", "0.0 is less than or equal"),
    ("splitmix", "split_config.domains=[svhn]", "split_config.domains", "['svhn'] names domains"),
    ("splitmix", "device=gpu", "device", "'gpu' is not of the allowed form; allowed: cpu,"),
    ("splitmix", "budgets=8-x", "budgets", "'8-x' is not of the allowed form; allowed: '8-4-2-1'"),
    ("splitmix", "seed=-1", "seed", "-1 is less than the minimum of 0"),
    ("splitmix", "method_params.atom=2", "methods.splitmix.params.atom", "2 is greater than"),
    ("splitmix", "method_params.fused=3", "methods.splitmix.params.fused", "3 is not of type"),
    ("splitmix", "method_params.loss_temp=hot", "methods.splitmix.params.loss_temp", "'hot' is"),
    ("splitmix", "method_params.width=1", "methods.splitmix.params", "unknown parameter(s) width"),
    ("fedavg_x1", "method_params.width=0", "methods.fedavg_x1.params.width", "0 is less than"),
]
if CPU_BUILD:  # the case of the issue: plain `cuda` on a torch built without it
    BAD.append(("splitmix", "device=cuda", "device", "'cuda' cannot be used: this torch"))


def train_args(out, method="splitmix", config=TEST_CONFIG):
    return ["train", "--config", str(config), "--dataset", "digits-mini", "--split", "tiny",
            "--method", method, "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip


def assert_refused(rc, stderr, out, key, value, source=str(TEST_CONFIG)):
    """Exit 2, one line `error: config error in SOURCE... at KEY: VALUE...; allowed...`, and no
    output directory (so no run.json)."""
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: config error in {source}"), lines[0]
    assert f" at {key}: {value}" in lines[0], lines[0]
    assert "allowed" in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize(("method", "item", "key", "value"), BAD, ids=[b[1] for b in BAD])
def test_cli_refuses_bad_set_value_writing_nothing(tmp_path, capsys, method, item, key, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main([*train_args(out, method), "--set", item])
    err = capsys.readouterr().err
    assert_refused(exit_.value.code, err, out, key, value, f"{TEST_CONFIG} with --set {item}")


@pytest.mark.slow
@pytest.mark.parametrize("item", ["rounds=-3", "lr=fast", "device=cuda:999"])
def test_cli_subprocess_exit_2_and_one_line(tmp_path, item):
    """The real entry point, as a user runs it (no traceback from any layer)."""
    (_, _, key, value), out = next(b for b in BAD if b[1] == item), tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "splitmix", *train_args(out), "--set", item],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert_refused(proc.returncode, proc.stderr, out, key, value, f"{TEST_CONFIG} with --set")


FILE_EDITS = [
    # (what the file says, key, value): the same rules when the value is in the config file
    ({"participation": 50}, "participation", "50 is more than the 6 clients of digits-mini/tiny"),
    ({"lr": "0.1"}, "lr", "'0.1' is not of type 'number'"),
    ({"momentum": 1.5}, "momentum", "1.5 is greater than or equal to the maximum of 1"),
    ({"adv": {"lam": 2}}, "adv.lam", "2.0 is greater than the maximum of 1"),
    ({"rounds": -3}, "rounds", "-3 is less than the minimum of 1"),
]


@pytest.mark.parametrize(("training", "key", "value"), FILE_EDITS, ids=[e[1] for e in FILE_EDITS])
def test_cli_refuses_bad_file_value(tmp_path, capsys, training, key, value):
    cfg = tiny_config()
    cfg["training"].update(training)
    path = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(train_args(out, "fedavg_x1", config=path))  # no method layer overrides training
    assert_refused(exit_.value.code, capsys.readouterr().err, out, key, value, f"{path} at")


def test_set_repairs_a_value_the_file_gets_wrong(tmp_path):
    """--set is applied before validation: a GPU config can be run on CPU with device=cpu."""
    cfg = tiny_config()
    cfg["training"]["device"] = "cuda:999"
    cfg.pop("workflow")
    exp = load_experiment(write_config(tmp_path / "c.yaml", cfg))
    with pytest.raises(ConfigError, match="at device: 'cuda:999' cannot be used"):
        resolve_run(exp, "digits-mini", "tiny", "splitmix", 1)
    fixed = resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["device=cpu"])
    assert fixed.device == "cpu"
    # the workflow parse skips only the device question (its jobs may run on another node)
    assert resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, check_device=False).device == (
        "cuda:999"
    )


# Hashes of config/test.yaml's runs, pinned: validation must never change a good config's hash, or
# every finished result would be retrained. (Re-pinned when the val_batch_size field was added: a
# new run-config field deliberately changes every hash; and when method_params began to hold the
# method's declared defaults: the methods with defaults the config does not set, sheterofl,
# splitmix and depthfl, deliberately changed.)
MAIN_HASHES = {
    "fedavg_x0.125": "0c492e538024173d",
    "fedavg_x0.25": "d18c77ca31b6c4fe",
    "fedavg_x0.5": "ac870ea1faf606a4",
    "fedavg_x1": "3473e90c8bafd171",
    "heterofl": "ddc2483dbade371c",
    "sheterofl": "cc2cb4026540f9df",
    "splitmix": "ed94afda04f68942",
    "depthfl": "d33b35da8b8144e4",
    "fedrolex": "d7fbe4c54027aca6",
    "feddropout": "cecbe7edc613b59a",
    "fjord": "ee131653323ddd52",
    "fiarse": "629b4ca6d62abb2b",
    "scalefl": "224ce74d369bdb22",
}


def test_good_config_keeps_its_hash():
    exp = load_experiment(TEST_CONFIG)
    exp.pop("workflow")
    hashes = {key[2]: resolve_run(exp, *key).config_hash() for key in iter_runs(exp)}
    assert hashes == MAIN_HASHES


def test_equal_numbers_hash_alike_whatever_their_spelling():
    """1 and 1.0 are the same learning rate, 2.0 and 2 the same round count: the values are
    coerced to the field's type before hashing (a string is refused, see BAD)."""
    exp = load_experiment(TEST_CONFIG)
    exp.pop("workflow")
    base = resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["lr=1.0", "rounds=2"])
    same = resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["lr=1", "rounds=2.0"])
    assert (same.lr, same.rounds) == (1.0, 2)
    assert type(same.lr) is float and type(same.rounds) is int
    assert same.config_hash() == base.config_hash()
    lams = resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["adv.test_lams=[0, 1]"])
    assert lams.adv.test_lams == (0.0, 1.0) and all(type(v) is float for v in lams.adv.test_lams)
    with pytest.raises(ConfigError, match=r"at rounds: 2\.5 is not of type 'integer'"):
        resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["rounds=2.5"])


def test_schema_lives_in_the_package_and_covers_every_field():
    """The installed library reads the schema from inside the package; the workflow reads the same
    file; and every RunConfig field has a rule (else a valid value could not be checked)."""
    assert SCHEMA_PATH.parent == (REPO / "splitmix" / "schemas")
    assert (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve() == SCHEMA_PATH
    assert "SCHEMA_PATH" in (REPO / "workflow" / "rules" / "common.smk").read_text()
    defs = load_schema()["$defs"]
    fields = {f.name for f in dataclasses.fields(RunConfig)} - set(RESERVED)
    assert set(defs["training"]["properties"]) == fields
    assert set(defs["split"]["properties"]) == {f.name for f in dataclasses.fields(SplitConfig)}
    assert set(defs["adv"]["properties"]) == {f.name for f in dataclasses.fields(AdvConfig)}


def test_participation_bound_follows_the_domains_used():
    """clients = clients_per_domain x domains used: 2 x 3 for digits-mini, 2 x 1 with one domain."""
    exp = load_experiment(TEST_CONFIG)
    exp.pop("workflow")
    assert resolve_run(exp, "digits-mini", "tiny", "splitmix", 1, sets=["participation=6"])
    with pytest.raises(ConfigError, match=r"3 is more than the 2 clients .* allowed: -1 \(all\)"):
        resolve_run(
            exp, "digits-mini", "tiny", "splitmix", 1,
            sets=["split_config.domains=[usps]", "participation=3"],
        )  # fmt: skip


def test_device_problem_names_what_is_missing(monkeypatch):
    """The GPU branches, whatever this machine has: a CUDA build seeing 0 or 2 devices."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert device_problem("cuda") == (
        "no CUDA device is visible here (torch.cuda.is_available() is False)"
    )
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda") is None and device_problem("cuda:1") is None
    assert device_problem("cuda:2") == "only 2 CUDA device(s) are visible (cuda:0 to cuda:1)"
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert device_problem("cuda").startswith("this torch (") and device_problem("cpu") is None


def test_validate_run_passes_a_good_run_through():
    exp = load_experiment(TEST_CONFIG)
    exp.pop("workflow")
    cfg = resolve_run(exp, "digits-mini", "tiny", "fedavg_x0.5", 1)
    assert validate_run(cfg) is cfg


# ---- the workflow: the same values refused while parsing, before any job ----------------------
WORKFLOW_BAD = [
    ({"rounds": -3}, r"at training\.rounds: -3 is less than the minimum of 1; allowed"),
    ({"lr": "fast"}, r"at training\.lr: 'fast' is not of type 'number'; allowed"),
    ({"lr": "0.1"}, r"at training\.lr: '0\.1' is not of type 'number'; allowed"),
    ({"threads": 0}, r"at training\.threads: 0 is less than the minimum of 1; allowed"),
    ({"momentum": 1.5}, r"at training\.momentum: 1\.5 is greater than or equal to the maximum"),
    ({"local_epochs": 0}, r"at training\.local_epochs: 0 is less than the minimum of 1"),
    ({"adv": {"lam": 2}}, r"at training\.adv\.lam: 2 is greater than the maximum of 1"),
    ({"participation": 50}, r"\(run digits-mini/tiny/\S+ seed 1\) at participation: 50 is more "
                            r"than the 6 clients of digits-mini/tiny"),
]  # fmt: skip


WORKFLOW_IDS = [next(iter(edit)) for edit, _ in WORKFLOW_BAD]


@pytest.mark.slow
@pytest.mark.parametrize(("training", "expected"), WORKFLOW_BAD, ids=WORKFLOW_IDS)
def test_workflow_refuses_the_same_values(tmp_path, training, expected):
    cfg = tiny_config()
    cfg["training"].update(training)
    path = write_config(tmp_path / "c.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(path))
    assert proc.returncode != 0
    line = next((x for x in proc.stdout.splitlines() if x.startswith("config error in")), "")
    assert line.startswith(f"config error in {path}"), proc.stdout[-2000:]
    assert re.search(expected, line), line
    assert "Traceback" not in proc.stdout
    assert "Job stats" not in proc.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.skipif(not CPU_BUILD, reason="needs a torch built without CUDA")
def test_workflow_warns_about_a_device_its_jobs_refuse(tmp_path):
    """A dry run of a GPU grid works on a CPU machine (it may be a login node), and says which runs
    cannot train here; the job itself then refuses, as the CLI tests above show."""
    cfg = tiny_config()
    cfg["training"]["device"] = "cuda"
    path = write_config(tmp_path / "c.yaml", cfg)
    proc = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(path))
    assert proc.returncode == 0, proc.stdout[-2000:]
    runs = len(cfg["methods"])  # the tiny grid: one run per method
    assert f"{runs} run(s) train on device 'cuda', which cannot be used here: this torch" in (
        proc.stdout
    )
    assert yaml.safe_load(path.read_text())["training"]["device"] == "cuda"
