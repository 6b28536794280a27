"""Resume as the workflow does it: Snakemake deletes a job's declared outputs before rerunning it.

Only ``checkpoint.pt`` and ``checkpoint-best.pt`` survive that; a resumed run must rebuild
``best.pt``, ``log.csv``, ``comm.csv`` and ``run.json`` from them, bit-identical to a run that was
never interrupted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from fl.toy import toy_config, toy_federation

from splitmix.fl.checkpoint import load_checkpoint
from splitmix.fl.engine import (
    BEST_STATE,
    CHECKPOINT,
    eta_seconds,
    format_duration,
    remove_stale_temporaries,
)
from splitmix.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

DECLARED = ("best.pt", "log.csv", "comm.csv", "run.json")  # rule train's outputs


def _train(out: Path, **kw):
    cfg = kw.pop("cfg", None) or toy_config()
    return run_training(cfg, out, federation=toy_federation(), progress=False, **kw)


def _assert_same_result(a: Path, b: Path) -> None:
    """Everything a finished run publishes is equal, but the wall-clock columns."""
    ba, bb = load_checkpoint(a / "best.pt"), load_checkpoint(b / "best.pt")
    assert (ba["round"], ba["metric"], ba["config_hash"]) == (
        bb["round"],
        bb["metric"],
        bb["config_hash"],
    )
    assert ba["algorithm"].keys() == bb["algorithm"].keys()
    for key, value in ba["algorithm"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, bb["algorithm"][key]), key
    for name in ("log.csv", "comm.csv"):
        fa = pd.read_csv(a / name).drop(columns=["seconds"])
        fb = pd.read_csv(b / name).drop(columns=["seconds"])
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    _train(out)
    return out


@pytest.mark.parametrize("stop_after", [2, 3, 5])
def test_resume_after_snakemake_deleted_the_outputs(tmp_path, straight, stop_after):
    res = _train(tmp_path, stop_after=stop_after)  # 6 rounds, checkpoint every 2
    assert res["stopped"]
    assert not (tmp_path / "best.pt").exists()  # published only when the run finishes
    for name in DECLARED:
        (tmp_path / name).unlink(missing_ok=True)
    done = load_checkpoint(tmp_path / CHECKPOINT)["round"] + 1
    assert done == stop_after // 2 * 2
    res = _train(tmp_path)
    assert res["rounds_done"] == 6 and not res["stopped"]
    _assert_same_result(straight, tmp_path)
    # best.pt is the best state, linked rather than copied: one model's bytes on disk
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / BEST_STATE).stat().st_ino


def test_stale_checkpoint_of_another_config_is_discarded_when_asked(tmp_path):
    _train(tmp_path, cfg=toy_config(lr=0.05), stop_after=4)
    new = toy_config(lr=0.2)
    res = _train(tmp_path, cfg=new, discard_stale=True)
    assert res["config_hash"] == new.config_hash()
    fresh = tmp_path.parent / f"{tmp_path.name}-fresh"
    _train(fresh, cfg=new)
    _assert_same_result(fresh, tmp_path)
    assert pd.read_csv(tmp_path / "log.csv")["lr"].iloc[0] == 0.2


def test_missing_best_state_starts_over_consistently(tmp_path, straight):
    _train(tmp_path, stop_after=4)
    (tmp_path / BEST_STATE).unlink()  # best.pt could not be rebuilt from the checkpoint alone
    _train(tmp_path)
    _assert_same_result(straight, tmp_path)


def test_stale_temporaries_of_the_run_are_removed_on_start(tmp_path, straight):
    _train(tmp_path, stop_after=2)
    stale = [".checkpoint.pt.k2j3.tmp", ".best.pt.x9.tmp", ".log.csv.abc.tmp",
             ".checkpoint-best.pt.q.tmp", ".run.json.1.tmp"]  # fmt: skip
    foreign = [".notes.txt.1.tmp", "checkpoint.pt.tmp"]  # not a temporary of this run's files
    for name in stale + foreign:
        (tmp_path / name).write_bytes(b"partial")
    _train(tmp_path)
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(stale)
    assert set(foreign) <= left
    _assert_same_result(straight, tmp_path)
    assert remove_stale_temporaries(tmp_path) == 0


def test_progress_lines_count_only_the_rounds_this_invocation_trains(tmp_path, capsys):
    cfg = toy_config()
    run_training(cfg, tmp_path, federation=toy_federation(), progress=True, stop_after=4)
    first = capsys.readouterr().err.splitlines()  # captured stderr is not a terminal: lines
    assert first[0].endswith("starting round 1 of 6")
    assert [line.split()[1] for line in first[1:]] == ["1/6", "2/6", "3/6", "4/6"]
    assert all(" val_acc " in line and " eta " in line for line in first[1:])
    run_training(cfg, tmp_path, federation=toy_federation(), progress=True)
    second = capsys.readouterr().err.splitlines()
    assert second[0].endswith("resuming after round 4 of 6 (checkpoint.pt)")
    assert [line.split()[1] for line in second[1:]] == ["5/6", "6/6"]
    assert second[-1].endswith("eta 0s")


def test_eta_and_durations():
    assert eta_seconds(30.0, 3, 7) == pytest.approx(70.0)
    assert eta_seconds(5.0, 0, 7) != eta_seconds(5.0, 0, 7)  # nothing done yet: unknown (nan)
    assert [format_duration(s) for s in (0.4, 42, 185, 7620, float("nan"))] == [
        "0s",
        "42s",
        "3m05s",
        "2h07m",
        "?",
    ]
