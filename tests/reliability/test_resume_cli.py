"""The training CLI beside the workflow: a hand run never touches results/, and a job refuses a
config other than the one it was scheduled with."""

from __future__ import annotations

import json

import pytest
from fl.toy import accept_toy_runs, toy_federation

from splitmix.experiment import load_experiment, resolve_run

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERIMENT = """
data_root: unused
training: {arch: toy, augment: none, rounds: 2, batch_size: 8, test_batch_size: 16, lr: 0.1,
           checkpoint_every: 1, threads: 1}
datasets:
  toy: {splits: {iid: {kind: iid}}}
methods:
  toy: {algorithm: toy-linear}
seeds: [1]
"""


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run `python -m splitmix train` in-process in tmp_path on the toy federation."""
    import splitmix.data.federation as federation
    from splitmix.cli import main

    monkeypatch.setattr(federation, "build_federation", lambda cfg: toy_federation())
    accept_toy_runs(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    base = ["train", "--config", "exp.yaml", "--dataset", "toy", "--split", "iid",
            "--method", "toy", "--seed", "1", "--no-progress"]  # fmt: skip

    def run(*extra: str) -> int:
        with pytest.raises(SystemExit) as done:
            main([*base, *extra])
        return done.value.code

    return run


def test_hand_run_defaults_to_runs_not_the_workflow_results(tmp_path, cli):
    assert cli() == 0
    out = tmp_path / "runs" / "toy" / "iid" / "toy" / "seed1"
    assert (out / "run.json").is_file() and (out / "best.pt").is_file()
    assert not (tmp_path / "results").exists()


def test_expect_hash_mismatch_is_one_line_and_writes_nothing(tmp_path, cli, capsys):
    assert cli("--out", "o", "--expect-hash", "0123456789abcdef") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    actual = resolve_run(load_experiment(tmp_path / "exp.yaml"), "toy", "iid", "toy", 1)
    assert (
        f"has config hash {actual.config_hash()}, not the 0123456789abcdef it was scheduled with"
        in err
    )
    assert not (tmp_path / "o").exists()
    assert cli("--out", "o", "--expect-hash", actual.config_hash()) == 0
    assert (tmp_path / "o" / "run.json").is_file()


def test_expect_hash_discards_a_checkpoint_of_another_config(tmp_path, cli, capsys):
    assert cli("--out", "o", "--set", "lr=0.05") == 0
    hashed = resolve_run(load_experiment(tmp_path / "exp.yaml"), "toy", "iid", "toy", 1)
    assert cli("--out", "o") == 2  # a hand run refuses the other config's checkpoint
    assert "--restart" in capsys.readouterr().err
    assert cli("--out", "o", "--expect-hash", hashed.config_hash()) == 0  # a job replaces it
    assert json.loads((tmp_path / "o" / "run.json").read_text())["config"]["lr"] == 0.1
