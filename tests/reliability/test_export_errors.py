"""``python -m splitmix export`` given bad input: one line, exit 2, nothing written.

Every case runs the real CLI in a subprocess on a copy of a finished tiny FedAvg x1/8 run and
checks the one ``error:`` line, the exit status and that the output folder holds nothing
afterwards (no model, no provenance, no temporary file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import error_line, namespace, run_cli

pytestmark = pytest.mark.slow


def _export(run: Path, out: Path, *extra: str, fmt: str = "torchscript") -> list[str]:
    return ["export", str(run), "--width", "0.125", "--format", fmt, "--out", str(out), *extra]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def _assert_empty(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "0.3"],
         "width 0.3 is not offered by run {run} (method fedavg); it offers 0.125"),
        (["--lam", "0.5"], "run {run} (method fedavg) has no dual BN, so it offers no lambda"),
        (["--width", "wide"], "--width 'wide' is not a number, e.g. 0.25"),
        (["--client", "mnist-0"], "run {run} shares its BN across clients, so every client gets"),
    ],
)  # fmt: skip
def test_what_the_run_does_not_offer(run_copy, data_root, out_dir, args, message):
    argv = _export(run_copy, out_dir / "m.pt")
    i = argv.index("--width") if args[0] == "--width" else len(argv)
    argv = argv[:i] + args + (argv[i + 2 :] if args[0] == "--width" else [])
    line = error_line(run_cli(argv, data_root))
    assert line.startswith(f"error: {message.format(run=run_copy)}"), line
    _assert_empty(out_dir)


def test_a_run_that_has_not_finished(run_copy, data_root, out_dir):
    (run_copy / "run.json").unlink()
    line = error_line(run_cli(_export(run_copy, out_dir / "m.pt"), data_root))
    assert line == (
        f"error: {run_copy / 'run.json'}: missing; the run is not finished (run.json is written "
        "last) - complete it with `python -m splitmix train` first"
    )
    _assert_empty(out_dir)


def test_a_folder_that_is_no_run(data_root, out_dir, tmp_path):
    line = error_line(run_cli(_export(tmp_path / "nowhere", out_dir / "m.pt"), data_root))
    assert line.startswith(f"error: {tmp_path / 'nowhere'}: no such run folder")
    _assert_empty(out_dir)


def test_a_corrupt_best_pt(run_copy, data_root, out_dir):
    best = run_copy / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])  # cut short
    line = error_line(run_cli(_export(run_copy, out_dir / "m.pt"), data_root))
    assert line.startswith(f"error: {best}: ") and "retrain the run" in line, line
    _assert_empty(out_dir)


def test_out_in_a_missing_folder(run_copy, data_root, tmp_path):
    out = tmp_path / "missing" / "m.pt"
    line = error_line(run_cli(_export(run_copy, out), data_root))
    assert line == (
        f"error: --out {out}: folder {out.parent} does not exist; create it or write elsewhere"
    )
    assert not out.parent.exists()


def test_out_is_a_folder(run_copy, data_root, out_dir):
    line = error_line(run_cli(_export(run_copy, out_dir), data_root))
    assert line.startswith(f"error: --out {out_dir} is a folder; give the model file")
    _assert_empty(out_dir)


def test_out_in_a_read_only_folder(run_copy, data_root, out_dir):
    if os.geteuid() == 0:  # root writes through permission bits: make the mount read-only
        prefix = namespace(
            f"mount --bind {out_dir} {out_dir} && mount -o remount,ro,bind {out_dir}"
        )
        if prefix is None:
            pytest.skip("running as root and no private mount namespace for a read-only mount")
        advice = "read-only file system; choose a writable location"
    else:
        prefix = None
        out_dir.chmod(0o555)
        advice = "permission denied; choose a location you can write"
    try:
        proc = run_cli(_export(run_copy, out_dir / "m.pt"), data_root, prefix=prefix)
    finally:
        out_dir.chmod(0o755)
    line = error_line(proc)
    assert line.startswith(f"error: {out_dir}") and advice in line, line
    _assert_empty(out_dir)


def test_onnx_without_the_export_extra_names_the_extra(run_copy, data_root, out_dir):
    proc = run_cli(
        _export(run_copy, out_dir / "m.onnx", fmt="onnx"),
        data_root,
        inject={"SPLITMIX_TEST_HIDE_MODULES": "onnxruntime"},
    )
    line = error_line(proc)
    assert line == (
        "error: --format onnx needs onnxruntime; install the optional extra 'export': "
        ".venv/bin/pip install -e '.[export]' (pins onnx, onnxruntime and onnxscript)"
    )
    _assert_empty(out_dir)


def test_a_good_export_writes_the_model_and_its_provenance(run_copy, data_root, out_dir):
    proc = run_cli(_export(run_copy, out_dir / "m.pt"), data_root)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.pt", "m.pt.json"]
    assert proc.stdout.startswith(f"wrote {out_dir / 'm.pt'} (")
