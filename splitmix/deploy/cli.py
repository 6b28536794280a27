"""``python -m splitmix export``: one model of a finished run as a standalone file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from splitmix.errors import ConfigError


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--{what} {text!r} is not a number, e.g. 0.25") from None
    if not math.isfinite(value):
        raise ConfigError(f"--{what} {text!r} is not a finite number, e.g. 0.25")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    from splitmix.deploy.run import BN_CHOICES
    from splitmix.models.files import FORMATS

    p = subparsers.add_parser(
        "export",
        help="write one width (and lambda) of a finished run as TorchScript or ONNX",
        description=(
            "Export the model of WIDTH (dual-BN runs: mixed by --lam) of a finished run as a file "
            "that runs without splitmix (torch.jit.load, or onnxruntime), verified against the "
            "in-suite model before it is written, with its provenance in FILE.json "
            "(docs/deploy.md)."
        ),
    )
    p.add_argument(
        "run", type=Path, help="run folder, e.g. results/digits-mini/feature/splitmix/seed1"
    )
    p.add_argument("--width", required=True, help="model width the run offers, e.g. 0.25")
    p.add_argument("--lam", default=None, help="dual-BN runs: robustness lambda in [0, 1]")
    p.add_argument("--client", default=None, help="runs with local (FedBN) BN: the client")
    p.add_argument("--format", required=True, choices=FORMATS, help="file format")
    p.add_argument("--out", required=True, type=Path, help="the model file to write")
    p.add_argument(
        "--bn",
        default="keep",
        choices=BN_CHOICES,
        help="keep: BN as evaluated (batch statistics on bn: batch runs, so feed batches); "
        "freeze: fixed statistics from the training images, serves single images",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="export the module as the method assembles it (Split-Mix: bases one after "
        "another) instead of its faster equivalent (fused bases)",
    )
    p.add_argument("--device", default=None, help="e.g. cpu (default: the run's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitmix.deploy.export import Request, check_out, export_model
    from splitmix.deploy.run import load_run
    from splitmix.models.files import require_format

    # everything a user can get wrong is checked before the run is loaded
    require_format(args.format)
    check_out(args.out)
    width = _number(args.width, "width")
    lam = None if args.lam is None else _number(args.lam, "lam")
    trained = load_run(args.run, device=args.device)
    req = Request(width=width, lam=lam, client=args.client, bn=args.bn, fast=not args.plain)
    rec = export_model(trained, req, args.format, args.out)
    acc = rec["test_acc_measured"] if rec["test_acc_measured"] is not None else rec["test_acc"]
    lam_text = "" if lam is None else f" λ {lam:g}"
    print(
        f"wrote {args.out} ({rec['bytes'] / 1e6:.2f} MB, {args.format}) and {args.out}.json: "
        f"{trained.method} width {width:g}{lam_text}, test acc {100 * acc:.2f}%, "
        f"max |Δlogit| {rec['verification']['max_abs_logit_diff']:.2g} vs the in-suite model; "
        f"BN: {rec['bn']['mode']}"
    )
    return 0
