"""Single command-line entry: ``python -m splitmix <command> ...``.

Each command lives in the module that owns its job and registers itself through a
``register(subparsers)`` function that sets ``func`` on its parser. ``main`` turns every
``SplitmixError`` into a one-line ``error: ...`` message and exit status 2 (no traceback).

System errors (disk full, read-only file system, a file where a folder should be) are not bugs
either: ``main`` prints them as one line naming the path and what to do, also with status 2.
Ctrl-C prints ``interrupted`` and exits 130, including when a library (``torch.save`` in C++)
wrapped the ``KeyboardInterrupt`` into another exception.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from splitmix.atomic import exception_chain
from splitmix.errors import SplitmixError

# (command, module defining ``register``). Modules are imported lazily so that a command that is
# not yet installed in a partial checkout does not break the others.
COMMANDS: list[tuple[str, str]] = [
    ("data", "splitmix.data.cli"),
    ("train", "splitmix.fl.cli"),
    ("evaluate", "splitmix.evaluate.cli"),
    ("report", "splitmix.report.cli"),
    ("export", "splitmix.deploy.cli"),
    ("estimate", "splitmix.estimate"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m splitmix",
        description="splitmix-bench: Split-Mix federated learning beside HeteroFL and FedAvg.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _name, module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue  # that command's package is not part of this checkout
            raise
        mod.register(sub)
    return parser


# errno -> what the user can do about it (the message names the path before this)
_OS_ADVICE: dict[int, str] = {
    errno.ENOSPC: "no space left on device; free space there or write somewhere else, then re-run",
    errno.EDQUOT: "disk quota exceeded; free space there or write somewhere else, then re-run",
    errno.EROFS: "read-only file system; choose a writable location (--root for data, --out "
    "for results) or make it writable",
    errno.EACCES: "permission denied; choose a location you can write (--root for data, --out "
    "for results) or fix its permissions",
    errno.EPERM: "operation not permitted; choose another location or fix its permissions",
    errno.EEXIST: "a file is in the way where a folder is needed; pass a folder path or move "
    "the file",
    errno.ENOTDIR: "a file is in the way where a folder is needed; pass a folder path or move "
    "the file",
    errno.EISDIR: "is a folder, a file name is needed; pass a file path",
    errno.ENOENT: "does not exist; check the path",
}


def os_error_line(exc: OSError) -> str:
    """One line for a system error: the path (or paths) involved, what happened, what to do."""
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    advice = _OS_ADVICE.get(exc.errno or -1)
    if advice is None:
        advice = f"{exc.strerror or type(exc).__name__}; check the path and its file system"
    return f"{where or 'a file'}: {advice}"


def interrupted(exc: BaseException) -> bool:
    """True if ``exc`` is, or was raised while handling, a KeyboardInterrupt."""
    return any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc))


def main(argv: list[str] | None = None) -> None:
    from splitmix.allocator import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    # process-wide, for every command: training, evaluation and the cost estimate all free and
    # reallocate the same large blocks (a wide layer's gradients) thousands of times
    keep_freed_memory()
    try:
        rc = args.func(args)
    except SplitmixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if interrupted(exc):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        if isinstance(exc, OSError):
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(rc or 0)
