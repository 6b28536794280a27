"""Untrusted files run no code and fail as one line: checkpoints, best models, dataset pickles.

Every crafted file carries a payload that, if unpickled, creates a marker file; the tests check
the exit code, that stderr is exactly one ``error:`` line naming the file and the fix, that no
traceback is printed, and that the marker never appears. The subprocess cases go through the real
``python -m splitmix`` entry point, as a user would.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data.fixtures import write_domainnet_tree, write_fedbn_digits  # tests/ is on sys.path

from splitmix.cli import main
from splitmix.data.sources.safe_pickle import load_pickled, safe_loads
from splitmix.errors import DataError
from splitmix.fl.checkpoint import load_checkpoint, plain

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERIMENT = """
data_root: {root}
training:
  rounds: {rounds}
  batch_size: 32
  test_batch_size: 64
  lr: 0.05
  lr_schedule: none
  budgets: 2-1
  checkpoint_every: 1
  threads: 1
datasets:
  digits-mini:
    splits:
      tiny: {{kind: feature, clients_per_domain: 1, percent: 0.1, val_ratio: 0.3}}
methods:
  fedavg: {{algorithm: fedavg, params: {{width: 0.5}}}}
seeds: [1]
"""
TRAIN_FIX = "pass --restart to train the run from round 0 (or use a new --out directory)"
BEST_FIX = "retrain the run (python -m splitmix train ... --restart) to rebuild it"


# ---- payloads --------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls ``os.system('touch MARKER')``: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_checkpoint(path: Path, marker: Path, *, zipped: bool = True) -> None:
    """A file shaped like an engine checkpoint whose unpickling would create ``marker``."""
    obj = {"format": 1, "config_hash": "x", "round": 0, "algorithm": {"evil": Payload(marker)}}
    if zipped:  # torch.save's zip format
        torch.save(obj, path)
    else:  # a bare pickle, which torch.load also accepts
        path.write_bytes(pickle.dumps(obj, protocol=2))


# ---- the CLI -----------------------------------------------------------------------------------
def write_config(tmp: Path, rounds: int = 1) -> Path:
    config = tmp / "exp.yaml"
    config.write_text(EXPERIMENT.format(root=tmp / "data", rounds=rounds))
    return config


def train_argv(config: Path, out: Path, method: str = "fedavg") -> list[str]:
    return ["train", "--config", str(config), "--dataset", "digits-mini", "--split", "tiny",
            "--method", method, "--seed", "1", "--out", str(out), "--no-progress"]  # fmt: skip


def run_module(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m splitmix ARGV`` with this checkout first on the path, one thread."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "splitmix", *argv],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


def in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(argv)
    return done.value.code, capsys.readouterr().err


def assert_one_error_line(stderr: str, *parts: str, logged: str | None = None) -> None:
    """stderr is one ``error:`` line holding ``parts``; with ``logged``, it may be preceded by
    log lines that each contain ``logged`` (e.g. the record of an opt-in), nothing else."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), stderr
    assert all(logged is not None and logged in line for line in lines[:-1]), stderr
    for part in parts:
        assert part in lines[-1], (part, lines[-1])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-round FedAvg run (checkpoint.pt, best.pt, run.json, logs)."""
    tmp = tmp_path_factory.mktemp("real")
    out = tmp / "run"
    with pytest.raises(SystemExit) as done:
        main(train_argv(write_config(tmp), out))
    assert done.value.code == 0
    return out


@pytest.fixture
def run_copy(real_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(real_run, out)
    write_config(tmp_path)
    return out


# ---- crafted checkpoints through the real entry point -------------------------------------------
@pytest.mark.slow  # an interpreter start with torch per case (~4 s on 2 shared cores)
@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "bare-pickle"])
def test_crafted_checkpoint_through_train_resume(run_copy: Path, tmp_path: Path, zipped: bool):
    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoint.pt"
    crafted_checkpoint(ckpt, marker, zipped=zipped)
    (run_copy / "run.json").unlink()  # an unfinished run: train resumes from checkpoint.pt
    before = snapshot(run_copy)
    proc = run_module(train_argv(tmp_path / "exp.yaml", run_copy))
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, f"error: {ckpt}: cannot be loaded", TRAIN_FIX)
    assert "refused to unpickle posix.system" in proc.stderr
    assert not marker.exists()
    assert snapshot(run_copy) == before  # nothing written, nothing removed


@pytest.mark.slow  # an interpreter start with torch per case
@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "bare-pickle"])
def test_crafted_best_through_evaluate(run_copy: Path, tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "pwned"
    best = run_copy / "best.pt"
    crafted_checkpoint(best, marker, zipped=zipped)
    before = snapshot(run_copy)
    proc = run_module(["evaluate", "--run", str(run_copy), "--no-progress"])
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, f"error: {best}: cannot be loaded", BEST_FIX)
    assert "refused to unpickle posix.system" in proc.stderr
    assert not marker.exists()
    assert snapshot(run_copy) == before  # no eval.csv, nothing else


# ---- damaged checkpoints: one line, in process ---------------------------------------------------
def _damage(kind: str, path: Path) -> str:
    """Damage ``path`` the way disks, copies and people do; return the expected reason."""
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
        return "(truncated or not a torch zip archive)"
    if kind == "empty":
        path.write_bytes(b"")
        return "(EOFError: empty or cut short)"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return "(not a torch checkpoint (Unsupported operand"
    if kind == "tensor":
        torch.save(torch.zeros(3), path)
        return "holds a Tensor, not a splitmix checkpoint"
    if kind == "foreign-dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        return "not a splitmix checkpoint (no format, config_hash, round, algorithm)"
    raise AssertionError(kind)


DAMAGE = ("truncated", "empty", "random", "tensor", "foreign-dict")


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_on_resume(run_copy: Path, tmp_path: Path, kind: str, capsys) -> None:
    ckpt = run_copy / "checkpoint.pt"
    reason = _damage(kind, ckpt)
    (run_copy / "run.json").unlink()
    before = snapshot(run_copy)
    argv = train_argv(tmp_path / "exp.yaml", run_copy)
    code, err = in_process(argv, capsys)
    assert code == 2
    assert_one_error_line(err, f"error: {ckpt}: ", reason, TRAIN_FIX)
    assert snapshot(run_copy) == before
    # the fix the message names works
    code, err = in_process([*argv, "--restart"], capsys)
    assert code == 0, err
    assert load_checkpoint(ckpt)["round"] == 0 and (run_copy / "run.json").is_file()


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_best_on_evaluate(run_copy: Path, kind: str, capsys) -> None:
    best = run_copy / "best.pt"
    reason = _damage(kind, best)
    before = snapshot(run_copy)
    code, err = in_process(["evaluate", "--run", str(run_copy), "--no-progress"], capsys)
    assert code == 2
    assert_one_error_line(err, f"error: {best}: ", reason, BEST_FIX)
    assert snapshot(run_copy) == before


# ---- the writer keeps to what the safe reader accepts --------------------------------------------
def test_plain_converts_numpy_scalars_and_refuses_objects() -> None:
    row = {"round": np.int64(3), "metric": np.float64(0.5), "ok": [np.float32(0.25), "x", None]}
    out = plain({"log_rows": [row]})
    assert out == {"log_rows": [{"round": 3, "metric": 0.5, "ok": [0.25, "x", None]}]}
    assert type(out["log_rows"][0]["round"]) is int and type(out["log_rows"][0]["metric"]) is float
    with pytest.raises(TypeError, match=r"checkpoint\.algorithm\.extra\.rng holds a numpy"):
        plain({"algorithm": {"extra": {"rng": np.random.default_rng(0)}}})
    with pytest.raises(TypeError, match=r"best\.pt\.algorithm\[1\] holds a numpy\.ndarray"):
        plain({"algorithm": [torch.zeros(1), np.zeros(2)]}, "best.pt")


def _frame(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["seconds"])


CLOCK_KEYS = ("wall_time", "seconds")  # wall-clock measurements: the only things that may differ


def _assert_same_state(a: object, b: object, where: str = "") -> None:
    """Bitwise equality of nested checkpoint data (tensors compared exactly), clocks aside."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in CLOCK_KEYS:
                _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


RUN_METHODS = {
    "fedavg": {"algorithm": "fedavg", "method_params": {"width": 0.5}},
    "heterofl": {"algorithm": "heterofl"},
    "sheterofl": {"algorithm": "sheterofl"},
    "splitmix": {"algorithm": "splitmix", "method_params": {"atom": 0.5}},
    # dual BN and adversarial training: the widest state a Split-Mix checkpoint can hold
    "splitmix-dual": {
        "algorithm": "splitmix",
        "method_params": {"atom": 0.5},
        "bn": "tracked",
        "adv": {"lam": 0.5, "steps": 2},  # PGD state is not checkpointed: few steps suffice
    },
}


def _run_config(method: str, tmp: Path):
    from splitmix.config import run_config_from_dict

    return run_config_from_dict(
        {
            "dataset": "digits-mini",
            "split": "tiny",
            "method": method,
            "seed": 1,
            "data_root": str(tmp / "data"),
            "split_config": {"clients_per_domain": 1, "percent": 0.1, "val_ratio": 0.3},
            "budgets": "2-1",
            "rounds": 2,
            "checkpoint_every": 1,
            "eval_every": 2,  # validate only at the end: the part under test is the checkpoint
            "batch_size": 32,
            "test_batch_size": 64,
            "threads": 1,
            **RUN_METHODS[method],
        }
    )


def _resume_equals_straight(tmp_path: Path, method: str) -> None:
    """A straight 2-round run and one stopped after round 1 then resumed end bit-identical, and
    every file they wrote loads with weights_only=True."""
    from splitmix.data.federation import build_federation
    from splitmix.training import run_training

    cfg = _run_config(method, tmp_path)
    fed = build_federation(cfg)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_training(cfg, straight, federation=fed, progress=False)
    res = run_training(cfg, resumed, federation=fed, progress=False, stop_after=1)
    assert res["stopped"] and load_checkpoint(resumed / "checkpoint.pt")["round"] == 0
    run_training(cfg, resumed, federation=fed, progress=False)
    for name in ("checkpoint.pt", "best.pt"):
        a = torch.load(straight / name, weights_only=True)  # what load_checkpoint relies on
        b = load_checkpoint(resumed / name)
        _assert_same_state(a, b, name)
        _assert_same_state(plain(a), a, name)  # already plain: saving changes nothing
    for name in ("log.csv", "comm.csv"):
        pd.testing.assert_frame_equal(_frame(straight / name), _frame(resumed / name))


@pytest.mark.slow  # each method trains 2 + 1 + 1 rounds (up to ~15 s on 2 shared cores)
@pytest.mark.parametrize("method", [m for m in RUN_METHODS if m != "fedavg"])
def test_every_method_round_trips_and_resumes_bit_identical(tmp_path: Path, method: str) -> None:
    _resume_equals_straight(tmp_path, method)


def test_fedavg_round_trips_and_resumes_bit_identical(tmp_path: Path) -> None:
    _resume_equals_straight(tmp_path, "fedavg")


# ---- dataset pickles ----------------------------------------------------------------------------
def test_safe_unpickler_rebuilds_numpy_and_plain_data_in_every_protocol() -> None:
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    obj = (images, np.array([1.0, 2.0]), [np.int64(7), "a", b"b", {"k": (1, 2.5)}, {3}])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        got = safe_loads(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(got[0], images)
        assert got[0].dtype == np.uint8 and got[1].tolist() == [1.0, 2.0]
        assert got[2] == [7, "a", b"b", {"k": (1, 2.5)}, {3}], protocol


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_unpickler_refuses_code(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(2), [Payload(marker)]), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        safe_loads(blob)
    assert not marker.exists()


def test_npy_object_array_is_read_like_np_load_but_safely(tmp_path: Path) -> None:
    good = tmp_path / "good.pkl"
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = np.ones((2, 2), np.uint8), np.array([3, 4])
    np.save(good, pair, allow_pickle=True)  # what np.save of an (images, labels) pair writes
    images, labels = load_pickled(good.with_suffix(".pkl.npy"), "a pair", "fix it")
    np.testing.assert_array_equal(images, np.ones((2, 2), np.uint8))
    assert labels.tolist() == [3, 4]
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with pytest.raises(DataError, match="refused to unpickle posix.system") as err:
        load_pickled(tmp_path / "evil.npy", "a pair", "fix it")
    assert str(err.value).endswith("; fix it") and "\n" not in str(err.value)
    assert not marker.exists()


def _evil_pickle(path: Path, marker: Path, real: object) -> None:
    """Replace ``path`` by a pickle of the same shape as ``real`` carrying a payload."""
    with open(path, "wb") as f:
        pickle.dump((real, [Payload(marker)]), f, protocol=pickle.HIGHEST_PROTOCOL)


def _zip_folder(src: Path, zpath: Path, arc_root: str) -> None:
    zpath.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(src.rglob("*.pkl")):
            zf.write(f, f"{arc_root}/{f.relative_to(src).as_posix()}")


@pytest.mark.slow  # two interpreter starts with torch
def test_crafted_fedbn_zip_through_data_prepare(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_fedbn_digits(src, "SVHN")
    marker = tmp_path / "pwned"
    _evil_pickle(
        src / "SVHN/partitions/train_part0.pkl", marker, np.zeros((3, 32, 32, 3), np.uint8)
    )
    root = tmp_path / "data"
    _zip_folder(src, root / "raw/fedbn/digit_dataset.zip", "digit_dataset")
    argv = ["data", "prepare", "digits", "--domain", "svhn", "--source", "fedbn",
            "--root", str(root), "--offline"]  # fmt: skip

    # no published checksum: refused by the acquisition layer unless the user opts in
    proc = run_module(argv, {"SPLITMIX_TRUST_FIRST_USE": ""})
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "digit_dataset.zip", "SPLITMIX_TRUST_FIRST_USE=1")
    # opted in, the zip is accepted and extracted, and its pickle still runs nothing
    proc = run_module(argv, {"SPLITMIX_TRUST_FIRST_USE": "1"})
    assert proc.returncode == 2
    assert_one_error_line(
        proc.stderr,
        "train_part0.pkl: refused to unpickle posix.system",
        "FedBN's Digits zip",
        logged="accepted on first use (SPLITMIX_TRUST_FIRST_USE=1) and pinned to sha256",
    )
    assert not marker.exists()
    assert not (root / "prepared").exists() or not list((root / "prepared").rglob("manifest.json"))


DRIVER = """
import dataclasses, sys
from splitmix.data import registry
# the fixture stands in for the official sketch.zip, whose real sha256 is pinned
rel = "domainnet/sketch.zip"
registry.REGISTRY[rel] = dataclasses.replace(registry.REGISTRY[rel], sha256=None, md5=None)
from splitmix.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow  # one interpreter start with torch
def test_crafted_domainnet_split_list_through_data_prepare(tmp_path: Path) -> None:
    root = tmp_path / "data"
    raw = root / "raw/domainnet"
    lists = tmp_path / "lists"
    write_domainnet_tree(raw, ["sketch"], as_zip=True, split_lists=lists)
    marker = tmp_path / "pwned"
    _evil_pickle(lists / "sketch_train.pkl", marker, ["../data/DomainNet/sketch/x/y.png"])
    _zip_folder(lists, raw / "domainnet_dataset.zip", "DomainNet")
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env["SPLITMIX_TRUST_FIRST_USE"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            str(driver),
            "data",
            "prepare",
            "domainnet",
            "--domain",
            "sketch",
            "--size",
            "16",
            "--root",
            str(root),
            "--offline",
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(
        proc.stderr,
        "sketch_train.pkl: refused to unpickle posix.system",
        "domainnet_dataset.zip",
        logged="accepted on first use (SPLITMIX_TRUST_FIRST_USE=1) and pinned to sha256",
    )
    assert not marker.exists()
