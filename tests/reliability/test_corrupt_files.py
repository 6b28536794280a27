"""Corrupt data caches either heal themselves or fail with one line naming a command that repairs
them, and that command does repair them.

Bundled datasets (digits-mini, cifar10-mini) are decoded into a cache under the data root; a
damaged cache is decoded again on the next load, silently for the user's run. Prepared datasets
are rebuilt from raw files, so a damaged one is an error that names ``data prepare ... --force``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data.fixtures import write_cifar10_pickles_tar  # tests/ is on sys.path (rootdir)

from splitmix.cli import main
from splitmix.config import RunConfig, SplitConfig
from splitmix.data import bundle, registry, store
from splitmix.data.federation import build_federation
from splitmix.errors import DataError

from .conftest import run_cli, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPLITMIX_DATA_MIRROR", "SPLITMIX_DOWNLOAD_BASE", "SPLITMIX_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPLITMIX_OFFLINE", "1")


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m splitmix ARGV`` in-process: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return int(done.value.code or 0), out, err


# ---- bundled cache: heals itself -----------------------------------------------------------------
MNIST = ("digits-mini", "mnist")


def _cache(root: Path) -> Path:
    return store.prepared_dir(*MNIST, 28, root)


def _truncate_images(d: Path) -> None:
    with open(d / "train_images.npy", "r+b") as fh:
        fh.truncate(1000)  # the repro: "mmap length is greater than file size"


def _empty_labels(d: Path) -> None:
    (d / "train_labels.npy").write_bytes(b"")


def _labels_out_of_range(d: Path) -> None:
    labels = np.load(d / "train_labels.npy")
    labels[3] = 42  # same size and header: only the recorded sha256 can tell
    np.save(d / "train_labels.npy", labels)


def _garbage_marker(d: Path) -> None:
    (d / "train.cache.json").write_text("{not json")


def _marker_of_an_older_version(d: Path) -> None:
    sha = json.loads((d / "train.cache.json").read_text())["bundle_sha256"]
    (d / "train.cache.json").unlink()
    (d / "train.bundle-sha256").write_text(sha + "\n")


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (_truncate_images, "train_images.npy has 1000 bytes, expected 784128"),
        (_empty_labels, "train_labels.npy has 0 bytes, expected 8128"),
        (_labels_out_of_range, "train_labels.npy does not match its recorded sha256"),
        (_garbage_marker, "JSONDecodeError"),
        (_marker_of_an_older_version, None),  # no marker of this version: decoded silently
    ],
    ids=["truncated-images", "empty-labels", "labels-out-of-range", "garbage-marker", "old-marker"],
)
def test_bundled_cache_heals_itself(
    damage: Callable[[Path], None],
    warning: str | None,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    truth = bundle.load_bundled(*MNIST, "train")
    damage(_cache(data_root))
    decoded = []
    real = bundle.load_bundled
    monkeypatch.setattr(bundle, "load_bundled", lambda *a: decoded.append(a) or real(*a))
    with caplog.at_level(logging.WARNING, logger="splitmix.data"):
        healed = store.load_domain(*MNIST, "train", root=data_root)
    assert decoded == [(*MNIST, "train")]  # decoded again from the bundle
    notes = [r.getMessage() for r in caplog.records]
    if warning is None:
        assert notes == []
    else:
        assert len(notes) == 1 and warning in notes[0] and "decoding the bundle again" in notes[0]
    np.testing.assert_array_equal(healed.images, truth.images)
    np.testing.assert_array_equal(healed.labels, truth.labels)
    # the rewritten cache verifies: the next load maps it without decoding
    again = store.load_domain(*MNIST, "train", root=data_root)
    assert len(decoded) == 1 and isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.labels, truth.labels)
    assert sorted(p.name for p in _cache(data_root).iterdir() if p.name.startswith("train")) == [
        "train.cache.json",
        "train_images.npy",
        "train_labels.npy",
    ]


@pytest.mark.parametrize("force", [False, True], ids=["prepare", "prepare-force"])
def test_data_prepare_of_a_bundled_dataset_repairs_its_cache(
    force: bool,
    data_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The command a user reaches for after a data error does something for bundled data too
    (it printed "nothing to prepare")."""
    _truncate_images(_cache(data_root))
    decoded = []
    real = bundle.load_bundled
    monkeypatch.setattr(bundle, "load_bundled", lambda *a: decoded.append(a) or real(*a))
    argv = ["data", "prepare", "digits-mini", "--root", str(data_root)]
    code, out, _ = cli(argv + (["--force"] if force else []), capsys)
    assert code == 0
    cache = data_root / "prepared" / "digits-mini"
    assert out == f"digits-mini is bundled with the package; its decoded cache in {cache} is ok\n"
    # only the damaged split is decoded again, or all six with --force
    assert len(decoded) == 6 if force else decoded == [(*MNIST, "train")]
    assert (_cache(data_root) / "train_images.npy").stat().st_size == 784128
    assert isinstance(store.load_domain(*MNIST, "train", root=data_root).images, np.memmap)


@pytest.mark.slow
def test_train_runs_on_a_truncated_bundled_cache(
    data_root: Path, config: Path, tmp_path: Path
) -> None:
    """The issue's repro end to end: every later run failed with an mmap traceback."""
    _truncate_images(_cache(data_root))
    proc = run_cli(train_args(config, tmp_path / "run"), data_root)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "train_images.npy has 1000 bytes, expected 784128" in proc.stderr
    assert (_cache(data_root) / "train_images.npy").stat().st_size == 784128


# ---- prepared cache: one line naming the command that repairs it ---------------------------------
CIFAR = ("cifar10", "cifar10")
PREPARE = "python -m splitmix data prepare cifar10 --domain cifar10 --force"


@pytest.fixture
def prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with cifar10 prepared from a tiny official-format fixture (checksum dropped)."""
    rel = "cifar10/cifar-10-python.tar.gz"
    entry = dataclasses.replace(registry.REGISTRY[rel], sha256=None, md5=None)
    monkeypatch.setitem(registry.REGISTRY, rel, entry)
    # a generated archive has no published checksum: accept it the way a user opts in
    monkeypatch.setenv("SPLITMIX_TRUST_FIRST_USE", "1")
    root = tmp_path / "root"
    write_cifar10_pickles_tar(root / "raw" / rel, 10)
    store.prepare(*CIFAR, root=root)
    return root


def _out(root: Path) -> Path:
    return store.prepared_dir(*CIFAR, 32, root)


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        with open(d / name, "r+b") as fh:
            fh.truncate(200)

    return damage


def _zero_bytes(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(b"")


def _bad_manifest(d: Path) -> None:
    (d / "manifest.json").write_text('{"format": 1, "splits": {')


def _wrong_shape(d: Path) -> None:
    """Valid arrays, but not what was prepared (a stale copy from elsewhere)."""
    np.save(d / "test_images.npy", np.zeros((3, 32, 32, 3), np.uint8))
    np.save(d / "test_labels.npy", np.zeros(3, np.int64))


@pytest.mark.parametrize(
    ("damage", "split", "message"),
    [
        (_truncate("train_images.npy"), "train",
         "{out}: prepared cache damaged (train_images.npy: mmap length is greater than file "
         "size); run `{cmd}` to rebuild it"),
        (_zero_bytes("test_labels.npy"), "test",
         "{out}: prepared cache damaged (test_labels.npy: empty file); run `{cmd}` to rebuild it"),
        (_bad_manifest, "train",
         "{out}/manifest.json: unreadable manifest (JSONDecodeError); run `{cmd}` to rebuild the "
         "domain"),
        (_wrong_shape, "test",
         "{out}: prepared cache damaged (test_images.npy has shape [3, 32, 32, 3], the manifest "
         "says [10, 32, 32, 3]); run `{cmd}` to rebuild it"),
    ],
    ids=["truncated-npy", "zero-byte-npy", "invalid-manifest", "wrong-shape"],
)  # fmt: skip
@pytest.mark.parametrize("repair", ["named command", "without --force"])
def test_damaged_prepared_cache_names_a_working_fix(
    damage: Callable[[Path], None],
    split: str,
    message: str,
    repair: str,
    prepared: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = {s: store.load_domain(*CIFAR, s, root=prepared, mmap=False) for s in ("train", "test")}
    damage(_out(prepared))
    with pytest.raises(DataError) as err:
        store.load_domain(*CIFAR, split, root=prepared)
    assert str(err.value) == message.format(out=_out(prepared), cmd=PREPARE)
    code, listing, _ = cli(["data", "list", "--root", str(prepared)], capsys)
    row = next(line for line in listing.splitlines() if line.startswith("cifar10 "))
    assert code == 0 and row.split()[2] == "damaged" and PREPARE in row
    argv = PREPARE.split()[3:] + ["--root", str(prepared)]
    if repair == "without --force":  # data prepare sees the damage and rebuilds by itself
        argv.remove("--force")
    code, out, _ = cli(argv, capsys)
    assert code == 0 and out.startswith(f"prepared {_out(prepared)}")
    for s, arrays in before.items():
        again = store.load_domain(*CIFAR, s, root=prepared)
        np.testing.assert_array_equal(again.images, arrays.images)
        np.testing.assert_array_equal(again.labels, arrays.labels)
    assert not [p.name for p in _out(prepared).iterdir() if p.name.startswith(".")]
    assert store.status(*CIFAR, root=prepared) == "prepared"


def test_prepared_labels_out_of_range_name_a_working_fix(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = np.load(_out(prepared) / "train_labels.npy")
    labels[0] = 42
    np.save(_out(prepared) / "train_labels.npy", labels)
    cfg = RunConfig(
        dataset="cifar10",
        split="s",
        method="m",
        algorithm="fedavg",
        seed=1,
        data_root=str(prepared),
        split_config=SplitConfig(clients_per_domain=1, val_ratio=0.2),
        budgets="1",
    )
    with pytest.raises(DataError) as err:
        build_federation(cfg)
    assert str(err.value) == (
        f"cifar10 cifar10/train: labels outside 0..9; the prepared cache is corrupt; rebuild it "
        f"with `{PREPARE}`"
    )
    code, _, _ = cli([*PREPARE.split()[3:], "--root", str(prepared)], capsys)
    assert code == 0
    fed = build_federation(cfg)
    assert max(int(c.train_y.max()) for c in fed.clients) <= 9


def test_invalid_manifest_does_not_stop_prepare_force(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's repro: ``data prepare --force`` crashed reading the manifest it replaces."""
    (_out(prepared) / "manifest.json").write_bytes(b"\x00\xff garbage")
    code, out, err = cli(["data", "prepare", "cifar10", "--force", "--root", str(prepared)], capsys)
    assert code == 0, err
    assert json.loads((_out(prepared) / "manifest.json").read_text())["splits"]["train"]["n"] == 50
