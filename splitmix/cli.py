"""Single command-line entry: ``python -m splitmix <command> ...``.

Each command lives in the module that owns its job and registers itself through a
``register(subparsers)`` function that sets ``func`` on its parser. ``main`` turns every
``SplitmixError`` into a one-line ``error: ...`` message and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from splitmix.errors import SplitmixError

# (command, module defining ``register``). Modules are imported lazily so that a command that is
# not yet installed in a partial checkout does not break the others.
COMMANDS: list[tuple[str, str]] = [
    ("data", "splitmix.data.cli"),
    ("train", "splitmix.fl.cli"),
    ("evaluate", "splitmix.evaluate.cli"),
    ("report", "splitmix.report.cli"),
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


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except SplitmixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
