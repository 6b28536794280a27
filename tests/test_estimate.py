"""``python -m splitmix estimate``: the synthetic federation, the extrapolation, the command."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splitmix.config import RunConfig
from splitmix.estimate import (
    Row,
    SplitPlan,
    Timing,
    _scaled_clients,
    build_federation,
    checkpoints,
    cost_key,
    makespan,
    parallel_jobs,
    plan_split,
    representatives,
    run_seconds,
    selected,
    summary_lines,
    synthetic_federation,
    time_sampled,
    validations,
)
from splitmix.experiment import load_experiment, resolve_run

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def quick_run(method: str, tmp: Path, **changes) -> RunConfig:
    """A run of the quick default (config/config.yaml), its bundled cache under ``tmp``."""
    exp = load_experiment(REPO / "config" / "config.yaml")
    cfg = resolve_run(exp, "digits-mini", "feature", method, 1)
    return dataclasses.replace(cfg, data_root=str(tmp), **changes)


def shape_of(fed) -> list[tuple]:
    """What the timing depends on, per client, in client order."""
    return [
        (
            c.index,
            c.name,
            c.domain,
            c.budget,
            round(c.weight, 12),
            tuple(c.train_x.shape),
            tuple(c.val_x.shape),
            tuple(c.test_x.shape),
            int(c.train_y.numel()),
            int(c.val_y.numel()),
            int(c.test_y.numel()),
            c.classes,
        )
        for c in fed.clients
    ]


# ---- the synthetic federation -------------------------------------------------------------------
def test_synthetic_federation_has_the_real_clients_and_sizes(tmp_path):
    from splitmix.data.federation import build_federation

    cfg = quick_run("splitmix", tmp_path)
    real = build_federation(cfg)
    fake, sources = synthetic_federation(cfg)
    assert len(fake.clients) == len(real.clients) == 6
    assert shape_of(fake) == shape_of(real)
    assert (fake.input_shape, fake.num_classes, fake.domains) == (
        real.input_shape,
        real.num_classes,
        real.domains,
    )
    assert sources == {"mnist": "bundled", "usps": "bundled", "mnistm": "bundled"}
    for c in fake.clients:
        assert c.train_x.dtype == torch.uint8 and c.train_y.dtype == torch.int64
        assert c.train_x.is_contiguous() and c.val_x.is_contiguous()


def test_synthetic_class_split_gives_every_client_its_real_classes(tmp_path):
    """A class non-IID split depends on the class counts only: same classes, same sizes and the
    same per-client label histogram as the real data."""
    from splitmix.data.federation import build_federation

    split = {
        "kind": "class",
        "clients_per_domain": 4,
        "classes_per_client": 3,
        "percent": 1.0,
        "val_ratio": 0.2,
    }
    cfg = quick_run("fedavg_x0.125", tmp_path)
    cfg = dataclasses.replace(cfg, split_config=dataclasses.replace(cfg.split_config, **split))
    real, (fake, _) = build_federation(cfg), synthetic_federation(cfg)
    assert shape_of(fake) == shape_of(real)
    for r, f in zip(real.clients, fake.clients, strict=True):
        assert torch.equal(
            torch.bincount(r.train_y, minlength=10), torch.bincount(f.train_y, minlength=10)
        )


def test_unprepared_dataset_uses_the_known_sizes(tmp_path):
    """Digits with 10 clients per domain at 30%: FedBN's 7,438 images a domain, 2,231 used,
    223 or 224 per client, half of it validation; the paper's 50 clients."""
    exp = load_experiment(REPO / "config" / "paper.yaml")
    cfg = resolve_run(exp, "digits", "feature", "fedavg_x0.125", 1, sets=["device=cpu"])
    cfg = dataclasses.replace(cfg, data_root=str(tmp_path))  # nothing prepared there
    fed, sources = synthetic_federation(cfg)
    assert len(fed.clients) == 50 and set(sources.values()) == {"known"}
    shares = [int(c.train_y.numel() + c.val_y.numel()) for c in fed.clients]
    assert sum(shares) == 5 * int(7438 * 0.3) and set(shares) <= {223, 224}
    assert all(
        int(c.val_y.numel()) == int(0.5 * s) for c, s in zip(fed.clients, shares, strict=True)
    )
    assert fed.input_shape == (3, 28, 28)


# ---- sampled rounds ------------------------------------------------------------------------------
def test_sampled_federation_keeps_one_client_per_budget_with_capped_images(tmp_path):
    """Quick default budgets in client order: 1/8, 1/8, 1/4, 1/2, 1/2, 1."""
    cfg = quick_run("splitmix", tmp_path)
    plan = plan_split(cfg)
    reps = representatives(plan)
    assert reps == {0.125: 0, 0.25: 2, 0.5: 3, 1.0: 5}
    fed = build_federation(cfg, plan, list(reps.values()), max_train=64, max_val=32)
    full, _ = synthetic_federation(cfg)
    assert [c.budget for c in fed.clients] == list(reps)
    assert [c.name for c in fed.clients] == [full.clients[i].name for i in reps.values()]
    assert [c.index for c in fed.clients] == [0, 1, 2, 3]  # the engine indexes clients by position
    for c, i in zip(fed.clients, reps.values(), strict=True):
        real = full.clients[i]
        assert c.train_x.shape[0] == min(64, real.train_x.shape[0]) == c.train_y.numel()
        assert c.val_x.shape[0] == min(32, real.val_x.shape[0]) == c.val_y.numel()
        assert torch.equal(c.train_y, real.train_y[: c.train_y.numel()])


def fake_plan(budgets, n_train, participation=-1):
    shards = [
        SimpleNamespace(train=np.arange(n), val=np.arange(n // 2), test=np.arange(1))
        for n in n_train
    ]
    plan = SplitPlan(None, 28, ["d"], {}, shards, list(budgets), [], {}, {})
    cfg = SimpleNamespace(batch_size=32, local_epochs=2, participation=participation)
    return cfg, plan


def test_sampled_clients_scale_by_their_real_steps():
    """Clients of 100 and 33 images at batch 32, 2 epochs: 4 and 1 batches an epoch (the lone
    33rd image joins the batch before it), 8 and 2 steps; representatives timed 2 steps each."""
    cfg, plan = fake_plan([0.5, 0.5, 1.0], [100, 33, 100])
    seconds = {0.5: 1.0, 1.0: 3.0}  # seconds of 2 timed steps
    timed = {0.5: 2, 1.0: 2}
    want = 1.0 * 8 / 2 + 1.0 * 2 / 2 + 3.0 * 8 / 2
    assert _scaled_clients(cfg, plan, seconds, timed) == pytest.approx(want)
    # 1 of 3 clients a round: a third of the expected cost
    cfg.participation = 1
    assert _scaled_clients(cfg, plan, seconds, timed) == pytest.approx(want / 3)


def test_sampled_timing_runs_the_engine_and_leaves_nothing(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    cfg = quick_run("splitmix", tmp_path)
    t = time_sampled(cfg, plan_split(cfg), steps=1, rounds=1)
    assert t.train_s > 0 and t.val_s > 0 and t.checkpoint_s > 0
    assert list(scratch.glob("splitmix-estimate-*")) == []


# ---- extrapolation ------------------------------------------------------------------------------
@pytest.mark.parametrize("rounds", [1, 2, 9, 10, 11, 300])
@pytest.mark.parametrize("every", [1, 3, 10])
def test_validation_and_checkpoint_counts_follow_the_engine(rounds, every):
    """The engine validates when (r+1) % eval_every == 0 or on the last round, and checkpoints
    when (r+1) % checkpoint_every == 0 before the last round, plus once at the end."""
    val = sum(1 for r in range(rounds) if (r + 1) % every == 0 or r == rounds - 1)
    ckpt = sum(1 for r in range(rounds) if (r + 1) % every == 0 and r + 1 < rounds) + 1
    assert validations(rounds, every) == val
    assert checkpoints(rounds, every) == ckpt


def test_run_seconds_on_a_fake_timing():
    t = Timing(train_s=2.0, val_s=1.0, checkpoint_s=0.5)
    # 10 rounds x 2 s, validations after rounds 3, 6, 9 and 10, checkpoints after 5 and 10
    assert run_seconds(t, rounds=10, eval_every=3, checkpoint_every=5) == 20 + 4 + 1.0
    # the paper's digits run: 300 rounds, validated every round, a checkpoint every 10
    assert run_seconds(t, 300, 1, 10) == 600 + 300 + 15.0
    cfg = RunConfig("d", "s", "m", "fedavg", rounds=300, eval_every=1, checkpoint_every=10)
    assert Row(cfg, "d/s/m/seed1", t).hours == pytest.approx(915 / 3600)
    assert Row(cfg, "", None).hours is None


def test_makespan_and_parallel_jobs():
    assert makespan([3, 3, 2, 2, 2], 1) == 12
    assert makespan([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 | 3+2, longest first
    assert makespan([5, 1, 1], 8) == 5  # never below the longest job
    assert makespan([], 2) == 0
    assert parallel_jobs("cpu", cores=2, threads=1, gpus=1) == 2
    assert parallel_jobs("cpu", cores=2, threads=4, gpus=1) == 1
    assert parallel_jobs("cuda", cores=16, threads=4, gpus=1) == 1
    assert parallel_jobs("cuda", cores=16, threads=4, gpus=2) == 2


def test_summary_lines_on_fake_timings():
    t = Timing(train_s=36.0, val_s=0.0, checkpoint_s=0.0)  # 100 rounds = 1 h

    def row(method: str, rounds: int, timing: Timing | None) -> Row:
        cfg = RunConfig("digits", "s", method, "fedavg", rounds=rounds, threads=2)
        return Row(cfg, "", timing)

    rows = [row("a", 100, t), row("b", 200, t), row("c", 300, None)]
    assert summary_lines(rows, "cpu", cores=4, gpus=1) == [
        "total: 2 run(s), 3.0 h one after another",
        "CPU-hours: 6.0 (each run's hours x its threads)",
        "wall time with --cores 4 (2 job(s) at once, 2 thread(s) each): 2.0 h",
        "not timed (--only): 1 run(s), not in the totals",
        "workflow.resources.digits.runtime: 150  (minutes: its longest run, 2.00 h, x1.25)",
    ]
    gpu = summary_lines(rows, "cuda", cores=16, gpus=1)
    assert gpu[1:3] == [
        "GPU-hours: 3.0 (one cuda per run)",
        "wall time with --cores 16 and --gpus 1 (1 job(s) at once, 2 thread(s) each): 3.0 h",
    ]


def test_runs_differing_only_in_seed_or_schedule_share_a_timing(tmp_path):
    a = quick_run("splitmix", tmp_path)
    same = [
        dataclasses.replace(a, seed=2),
        dataclasses.replace(a, lr=0.5, rounds=600, milestones=(1, 2), method="other"),
    ]
    other = [
        dataclasses.replace(a, participation=2),
        dataclasses.replace(a, budgets="8-1-1-1"),
        dataclasses.replace(a, batch_size=64),
    ]
    assert all(cost_key(c) == cost_key(a) for c in same)
    assert all(cost_key(c) != cost_key(a) for c in other)


def test_only_patterns(tmp_path):
    cfg = quick_run("splitmix", tmp_path)
    assert selected(cfg, [])
    for pattern in ("digits-mini", "digits-mini/", "digits-mini/feature", "*/*/split*"):
        assert selected(cfg, [pattern]), pattern
    for pattern in ("digits", "digits-mini/iid", "*/*/fedavg*"):
        assert not selected(cfg, [pattern]), pattern


# ---- the command --------------------------------------------------------------------------------
def estimate_cli(*args: str, cwd: Path = REPO, tmp: Path | None = None):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if tmp is not None:
        env.update(TMPDIR=str(tmp), SPLITMIX_DATA=str(tmp / "data"))
    return subprocess.run(
        [sys.executable, "-m", "splitmix", "estimate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_on_the_test_config(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "estimate.csv"
    proc = estimate_cli(
        "--configfile",
        "config/test.yaml",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
        tmp=scratch,
    )
    assert proc.returncode == 0, proc.stderr
    methods = list(load_experiment(REPO / "config" / "test.yaml")["methods"])  # one seed each
    assert "synthetic data of the real shapes" in proc.stdout
    assert f"total: {len(methods)} run(s)" in proc.stdout
    assert "workflow.resources.digits-mini.runtime:" in proc.stdout
    assert proc.stderr.count("timing ") == len(methods)  # one timing per method
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == methods
    for r in rows:
        t = Timing(
            float(r["train_s_per_round"]), float(r["val_s_per_pass"]), float(r["checkpoint_s"])
        )
        assert t.train_s > 0 and t.val_s > 0 and t.checkpoint_s > 0
        # test.yaml: 2 rounds, validated each round, a checkpoint every round
        want = (2 * t.train_s + 2 * t.val_s + 2 * t.checkpoint_s) / 3600
        assert float(r["hours"]) == pytest.approx(want, rel=1e-4)
    # the full-width model costs more a round than the 1/8-width one
    by = {r["method"]: float(r["train_s_per_round"]) for r in rows}
    assert by["fedavg_x1"] > by["fedavg_x0.125"]
    # the runs' temporary folders are gone (torch may keep its own cache there)
    assert list(scratch.glob("splitmix-estimate-*")) == []
    assert not (scratch / "data").exists()  # nothing prepared, nothing cached


@pytest.mark.slow
def test_cli_sampled_rounds(tmp_path):
    """--steps: one client per budget, the note says so, the totals are there."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = estimate_cli(
        "--configfile", "config/test.yaml", "--steps", "1", "--rounds", "1", "--threads", "1",
        "--only", "digits-mini/tiny/fedavg_x0.125", "--only", "digits-mini/tiny/splitmix",
        tmp=scratch,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sampled round(s)" in proc.stdout and "one client per budget, 1 step(s)" in proc.stdout
    assert "(4 of 6 clients, 1 step(s) each, 1 run(s) share it)" in proc.stderr
    assert "total: 2 run(s)" in proc.stdout
    assert list(scratch.glob("splitmix-estimate-*")) == []


def test_cli_missing_configfile_is_one_line(tmp_path):
    proc = estimate_cli("--configfile", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: config file {tmp_path / 'nope.yaml'} does not exist; pass --configfile FILE"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine can use CUDA")
def test_cli_unusable_device_is_one_line():
    proc = estimate_cli("--configfile", "config/test.yaml", "--device", "cuda")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: config error in config/test.yaml with --device cuda at device:")
    assert "'cuda' cannot be used" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "0"], "error: --rounds 0 is invalid; allowed: an integer >= 1"),
        (["--steps", "-2"], "error: --steps -2 is invalid; allowed: an integer >= 1"),
        (
            ["--only", "cifar10"],
            "error: --only cifar10 matches no run of the config; its runs "
            "are under: digits-mini/tiny",
        ),
    ],
)
def test_cli_bad_options_are_one_line(args, message):
    proc = estimate_cli("--configfile", "config/test.yaml", *args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [message]
