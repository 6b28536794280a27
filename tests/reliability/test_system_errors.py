"""Interrupts and system errors: Ctrl-C inside a save, a full disk, a read-only data root, an
``--out`` that names the wrong kind of path, damaged training logs given to ``evaluate``.

Every case runs the real CLI in a subprocess and checks the exit status, that no traceback is
printed, the one line the user reads, the files left behind (never a half-written one), and that
the fix the message names works.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitmix.atomic import atomic_write, atomic_write_text
from splitmix.cli import main, os_error_line

from .conftest import (
    REPO,
    cli_env,
    error_line,
    namespace,
    run_cli,
    temporaries,
    train_args,
)

OUTPUTS = ("checkpoint.pt", "best.pt", "log.csv", "comm.csv", "run.json")
EVAL_ARGS = ["--no-attack", "--no-progress"]
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="fault injection names files via /proc/self/fd"
)


def _default_sigint() -> None:
    """In the child: SIGINT as at a terminal (a shell starting background jobs ignores it, and
    Python then never installs its KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---- Ctrl-C during torch.save -------------------------------------------------------------------
# The engine saves the best model so far as checkpoint-best.pt (best.pt is only linked to it when
# the run finishes), so that and checkpoint.pt are the two files a torch.save can be cut in.
@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("target", ["checkpoint-best.pt", "checkpoint.pt"])
def test_ctrl_c_while_saving(target: str, data_root: Path, config: Path, tmp_path: Path) -> None:
    out, flag = tmp_path / "run", tmp_path / "writing"
    inject = {"SPLITMIX_TEST_PAUSE_WRITE": target, "SPLITMIX_TEST_PAUSE_FLAG": str(flag)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitmix", *train_args(config, out)],
        env=cli_env(data_root, inject),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the save was never reached"
        assert temporaries(out), "the interrupt must land while the temporary file is open"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C at a terminal sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert temporaries(out) == []  # the half-written file was removed
    assert not (out / target).exists()  # its first save was interrupted
    assert not (out / "run.json").exists()
    again = run_cli(train_args(config, out), data_root)  # just run it again
    assert again.returncode == 0, again.stderr
    assert all((out / name).is_file() for name in OUTPUTS)


# ---- disk full ----------------------------------------------------------------------------------
@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("target", ["checkpoint-best.pt", "checkpoint.pt", "log.csv", "run.json"])
def test_disk_full_in_train(target: str, data_root: Path, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli(train_args(config, out), data_root, inject={"SPLITMIX_TEST_ENOSPC": target})
    line = error_line(proc)
    assert line == (
        f"error: {out / target}: no space left on device; free space there or write somewhere "
        "else, then re-run"
    )
    assert temporaries(out) == []
    assert not (out / target).exists() and not (out / "run.json").exists()
    again = run_cli(train_args(config, out), data_root)  # space freed: the same command finishes
    assert again.returncode == 0, again.stderr
    assert all((out / name).is_file() for name in OUTPUTS)


@needs_proc
@pytest.mark.slow
def test_disk_full_in_evaluate(run_copy: Path, data_root: Path) -> None:
    args = ["evaluate", "--run", str(run_copy), *EVAL_ARGS]
    proc = run_cli(args, data_root, inject={"SPLITMIX_TEST_ENOSPC": "eval.csv"})
    line = error_line(proc)
    assert line.startswith(f"error: {run_copy / 'eval.csv'}: no space left on device;")
    assert temporaries(run_copy) == [] and not (run_copy / "eval.csv").exists()
    again = run_cli(args, data_root)
    assert again.returncode == 0, again.stderr
    assert (run_copy / "eval.csv").is_file()


@needs_proc
@pytest.mark.slow
def test_disk_full_in_data_prepare(mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    args = ["data", "prepare", "digits", "--domain", "usps", "--root", str(root),
            "--mirror", str(mirror), "--source", "raw"]  # fmt: skip
    proc = run_cli(args, root, inject={"SPLITMIX_TEST_ENOSPC": "train_images.npy"})
    line = error_line(proc)
    out = root / "prepared/digits/usps/28px"
    assert line.startswith(f"error: {out / 'train_images.npy'}: no space left on device;")
    assert temporaries(root) == []
    assert not (out / "manifest.json").exists()  # never looks prepared
    again = run_cli(args, root)
    assert again.returncode == 0, again.stderr
    assert (out / "manifest.json").is_file()


@pytest.mark.slow
def test_disk_full_on_a_real_small_file_system(
    data_root: Path, config: Path, tmp_path: Path
) -> None:
    """The same, without injection: --out on a 600 KB tmpfs (a checkpoint needs ~900 KB)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = namespace(f"mount -t tmpfs -o size=600k none {disk}")
    if prefix is None:
        pytest.skip("this machine allows no private mount namespace (unshare -rm) for a tmpfs")
    # list what is left on the tmpfs before the namespace (and the mount) goes away
    prefix[-1] = prefix[-1].replace(
        'exec "$0" "$@"', f'"$0" "$@"; rc=$?; find {disk} -name ".*.tmp"; exit $rc'
    )
    proc = run_cli(train_args(config, disk / "run"), data_root, prefix=prefix)
    line = error_line(proc)
    assert line.startswith(f"error: {disk / 'run'}/") and "no space left on device" in line
    assert proc.stdout.strip() == ""  # no temporary file was left on the full disk


# ---- read-only data root ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("action", ["prepare", "fetch"])
def test_read_only_data_root(action: str, mirror: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    args = ["data", action, "digits", "--domain", "usps", "--root", str(root),
            "--mirror", str(mirror)]  # fmt: skip
    if os.geteuid() == 0:  # root writes through permission bits: make the mount read-only
        prefix = namespace(f"mount --bind {root} {root} && mount -o remount,ro,bind {root}")
        if prefix is None:
            pytest.skip("running as root and no private mount namespace for a read-only mount")
        advice = "read-only file system; choose a writable location (--root for data"
    else:
        prefix = None
        root.chmod(0o555)
        advice = "permission denied; choose a location you can write (--root for data"
    try:
        proc = run_cli(args, root, prefix=prefix)
    finally:
        root.chmod(0o755)
    line = error_line(proc)
    assert line.startswith(f"error: {root}/") and advice in line, line
    assert list(root.iterdir()) == []  # nothing was written
    again = run_cli(args, root)  # writable again: the same command works
    assert again.returncode == 0, again.stderr


# ---- --out naming the wrong kind of path --------------------------------------------------------
@pytest.mark.slow
def test_train_out_is_a_file(data_root: Path, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("keep me\n")
    line = error_line(run_cli(train_args(config, out), data_root))
    assert line == (
        f"error: {out}: a file is in the way where a folder is needed; pass a folder path or "
        "move the file"
    )
    assert out.read_text() == "keep me\n"


@pytest.mark.slow
def test_evaluate_out_is_a_folder(run_copy: Path, data_root: Path, tmp_path: Path) -> None:
    args = ["evaluate", "--run", str(run_copy), "--out", str(tmp_path), *EVAL_ARGS]
    line = error_line(run_cli(args, data_root))
    assert line == f"error: --out {tmp_path} is a folder; give the rows file, e.g. " + str(
        tmp_path / "eval.csv"
    )
    assert not (tmp_path / "eval.csv").exists()


# ---- damaged training logs given to evaluate ----------------------------------------------------
def _cut_mid_line(text: str) -> str:
    return text[: text.rindex("\n", 0, len(text) - 1) + 20]


def _last_row_dropped(text: str) -> str:
    return text[: text.rindex("\n", 0, len(text) - 1) + 1]


def _validation_blanked(text: str) -> str:
    """The last row with its validation fields emptied (what the old reader turned into NaN)."""
    lines = text.splitlines()
    fields = lines[-1].split(",")
    fields[7:] = [""] * (len(fields) - 7)
    return "\n".join([*lines[:-1], ",".join(fields)]) + "\n"


FIX = (
    "re-run this run's `python -m splitmix train` command without --restart (it rewrites log.csv "
    "and comm.csv from checkpoint.pt), or retrain it with --restart"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("log.csv", _cut_mid_line, "the last line is cut off (no final newline)"),
        ("log.csv", _last_row_dropped, "has rounds 0..0, the run trained rounds 0..1"),
        (
            "log.csv",
            _validation_blanked,
            "round 1 has no val_acc@0.125 value, though it was validated",
        ),  # fmt: skip
        ("comm.csv", lambda t: t.replace(",", ";"), "missing column(s) round, client"),
        (
            "comm.csv",
            lambda t: t.replace("896776", "lots", 1),
            "column 'bytes_down' row 0 = 'lots' is not a number",
        ),  # fmt: skip
        ("comm.csv", lambda t: bytes(range(128, 256)), "not a text CSV (binary data)"),
        ("comm.csv", lambda t: "", "not a readable CSV (No columns to parse from file)"),
    ],
    ids=[
        "log-cut-mid-line",
        "log-row-missing",
        "log-val-blank",
        "comm-semicolons",
        "comm-text-number",
        "comm-binary",
        "comm-empty",
    ],  # fmt: skip
)
def test_damaged_log_is_refused_and_repaired(
    name: str, damage, message: str, run_copy: Path, data_root: Path, config: Path
) -> None:
    path = run_copy / name
    damaged = damage(path.read_text())
    if isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        path.write_text(damaged)
    args = ["evaluate", "--run", str(run_copy), *EVAL_ARGS]
    line = error_line(run_cli(args, data_root))
    assert line.startswith(f"error: {path}: {message}"), line
    if "missing column" not in message:
        assert line.endswith(FIX), line
    assert not (run_copy / "eval.csv").exists()
    # the fix: the same train command, without --restart
    repair = run_cli(train_args(config, run_copy), data_root)
    assert repair.returncode == 0, repair.stderr
    done = run_cli(args, data_root)
    assert done.returncode == 0, done.stderr
    assert (run_copy / "eval.csv").is_file()


# ---- the mechanisms, in-process (fast) -----------------------------------------------------------
class _FailingFile:
    """A file object whose writes raise ``exc`` after the first ``ok`` calls, as a full disk or a
    Ctrl-C landing inside ``torch.save``'s C++ writer does."""

    def __init__(self, fh, exc: BaseException, ok: int = 1) -> None:
        self.fh, self.exc, self.ok = fh, exc, ok

    def write(self, data) -> int:
        if self.ok == 0:
            raise self.exc
        self.ok -= 1
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KeyboardInterrupt(), KeyboardInterrupt),
        (OSError(errno.ENOSPC, "No space left on device"), OSError),
    ],
    ids=["ctrl-c", "disk-full"],
)
def test_atomic_torch_save_surfaces_the_real_error(
    exc: BaseException, expected: type, tmp_path: Path
) -> None:
    """torch.save turns what write() raised into RuntimeError('unexpected pos ...'); the write
    must surface the original, naming the file, and leave nothing behind."""
    import torch

    target = tmp_path / "best.pt"
    target.write_bytes(b"previous")
    with pytest.raises(BaseException) as raised:
        atomic_write(target, lambda fh: torch.save({"w": torch.zeros(4096)}, _FailingFile(fh, exc)))
    assert type(raised.value) is expected
    if expected is OSError:
        assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(target)
    assert target.read_bytes() == b"previous"  # the old complete file is untouched
    assert temporaries(tmp_path) == []


def test_atomic_write_refuses_a_folder_by_name(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as raised:
        atomic_write_text(tmp_path, "x")
    assert raised.value.filename == str(tmp_path)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/r/best.pt"),
         "/r/best.pt: no space left on device; free space there or write somewhere else, then "
         "re-run"),
        (OSError(errno.EROFS, "Read-only file system", "/d/raw"),
         "/d/raw: read-only file system; choose a writable location (--root for data, --out for "
         "results) or make it writable"),
        (FileExistsError(errno.EEXIST, "File exists", "/r/notes.txt"),
         "/r/notes.txt: a file is in the way where a folder is needed; pass a folder path or move "
         "the file"),
        (OSError(errno.EIO, "Input/output error", "/r/x", None, "/r/y"),
         "/r/x -> /r/y: Input/output error; check the path and its file system"),
        (OSError(errno.ENOSPC, "No space left on device"),
         "a file: no space left on device; free space there or write somewhere else, then re-run"),
    ],
    ids=["enospc", "erofs", "eexist", "two-paths", "no-path"],
)  # fmt: skip
def test_os_error_line(exc: OSError, line: str) -> None:
    assert os_error_line(exc) == line


def _wrapped(inner: BaseException) -> RuntimeError:
    """A RuntimeError raised while handling ``inner``, as torch.save wraps a Ctrl-C."""
    try:
        try:
            raise inner
        except BaseException:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    except RuntimeError as exc:
        exc.__context__ = inner
        return exc


@pytest.mark.parametrize(
    ("exc", "code", "err"),
    [
        (_wrapped(KeyboardInterrupt()), 130, "interrupted\n"),
        (OSError(errno.ENOSPC, "No space left on device", "/r/eval.csv"), 2,
         "error: /r/eval.csv: no space left on device; free space there or write somewhere else, "
         "then re-run\n"),
    ],
    ids=["wrapped-ctrl-c", "disk-full"],
)  # fmt: skip
def test_main_turns_system_errors_into_one_line(
    exc: BaseException,
    code: int,
    err: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from splitmix.evaluate import cli as evaluate_cli

    def fail(_args: object) -> int:
        raise exc

    monkeypatch.setattr(evaluate_cli, "run", fail)
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--run", "x"])
    assert done.value.code == code
    assert capsys.readouterr().err == err
