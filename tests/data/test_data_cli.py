"""``python -m splitmix data ...`` via ``splitmix.cli.main``: output, exit codes, error lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitmix.cli import main


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPLITMIX_DATA_MIRROR", "SPLITMIX_DOWNLOAD_BASE", "SPLITMIX_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPLITMIX_OFFLINE", "1")


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def table(out: str) -> dict[tuple[str, str], str]:
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[0] != "data":
            rows[(parts[0], parts[1])] = (
                " ".join(parts[2:4]) if parts[2] in ("raw", "in") else parts[2]
            )
    return rows


def test_list_shows_statuses(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["data", "list", "--root", str(tmp_path), "--mirror", str(mirror)]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    assert rows[("digits", "mnist")] == "in mirror"
    assert rows[("cifar10", "cifar10")] == "in mirror"  # the JPEG copy is in the mirror
    assert rows[("digits-mini", "usps")] == "bundled"
    assert rows[("domainnet", "sketch")] == "missing"
    assert "domainnet/sketch.zip" in next(line for line in out.splitlines() if " sketch " in line)
    # without the mirror nothing is at hand
    assert run(["data", "list", "--root", str(tmp_path)]) == 0
    assert table(capsys.readouterr().out)[("digits", "mnist")] == "missing"


def test_fetch_then_prepare_then_list(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, m = str(tmp_path), str(mirror)
    assert run(["data", "fetch", "usps", "--root", root, "--mirror", m]) == 2  # usps.bz2 absent
    assert "usps/usps.bz2: missing" in one_line_error(capsys)
    assert (tmp_path / "raw/usps/usps.h5").is_file()  # the others were still fetched
    assert run(["data", "fetch", "usps/usps.h5", "--root", root]) == 0  # now local, no mirror
    capsys.readouterr()
    assert run(["data", "list", "--root", root]) == 0
    assert table(capsys.readouterr().out)[("digits", "usps")] == "raw present"
    assert run(["data", "prepare", "digits", "--domain", "usps", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "source raw/h5, train 7438, test 1860" in out
    manifest = json.loads((tmp_path / "prepared/digits/usps/28px/manifest.json").read_text())
    assert manifest["splits"]["test"]["n"] == 1860
    assert run(["data", "list", "--root", root]) == 0
    assert table(capsys.readouterr().out)[("digits", "usps")] == "prepared"


def test_unknown_dataset_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["data", "prepare", "nope", "--root", str(tmp_path)]) == 2
    line = one_line_error(capsys)
    assert "unknown dataset 'nope'" in line and "digits" in line
    assert run(["data", "fetch", "nope", "--root", str(tmp_path)]) == 2
    assert "unknown dataset, file group or raw file 'nope'" in one_line_error(capsys)
    assert run(["data", "prepare", "digits", "--domain", "mars", "--root", str(tmp_path)]) == 2
    assert "unknown domain 'mars'" in one_line_error(capsys)


def test_prepare_missing_raw_names_file_checksum_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "prepare", "digits", "--domain", "svhn", "--root", str(tmp_path)]
    assert run([*argv, "--source", "raw"]) == 2
    line = one_line_error(capsys)
    assert f"{tmp_path}/raw/svhn/train_32x32.mat: missing" in line
    assert "md5 e26dedcc434d2e4c54c9b2d4a06d8373" in line
    assert "https://ufldl.stanford.edu/housenumbers/train_32x32.mat" in line
    assert not (tmp_path / "prepared/digits/svhn").exists()
    # default source: FedBN's zip first, and the message points at the official files too
    assert run(argv) == 2
    line = one_line_error(capsys)
    assert "fedbn/digit_dataset.zip: missing" in line and "gdown" in line
    assert "--source raw needs svhn/train_32x32.mat, svhn/test_32x32.mat" in line


def test_bundled_prepare_only_checks_the_decoded_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["data", "prepare", "cifar10-mini", "--root", str(tmp_path)]) == 0
    assert "bundled" in capsys.readouterr().out
    # what a training job would decode on first use anyway; nothing else is written
    cache = tmp_path / "prepared/cifar10-mini/cifar10/32px"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        f"{split}{suffix}"
        for split in ("train", "test")
        for suffix in (".cache.json", "_images.npy", "_labels.npy")
    )
    assert all(p.parent == cache for p in tmp_path.rglob("*") if p.is_file())


def test_fetch_dataset_uses_the_source_prepare_would(
    mirror: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "fetch", "digits", "--domain", "mnist", "--root", str(tmp_path)]
    assert run([*argv, "--mirror", str(mirror)]) == 0
    fetched = sorted(p.name for p in (tmp_path / "raw/mnist").iterdir())
    assert fetched == sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
        + ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    )
    assert not (tmp_path / "raw/fedbn").exists()  # FedBN's zip was not at hand: not tried
    sums = (tmp_path / "raw/SHA256SUMS").read_text().splitlines()
    assert len(sums) == 4 and all(len(line.split()[0]) == 64 for line in sums)
    capsys.readouterr()
    assert run(argv) == 0  # now local: no mirror needed
    assert capsys.readouterr().out.count("ok ") == 4
