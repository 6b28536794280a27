"""``python -m splitmix evaluate``: evaluation rows of one finished training run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from splitmix.errors import ConfigError


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.125,0.25,1"`` -> (0.125, 0.25, 1.0); one-line ConfigError naming ``what`` otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"--{what} {text!r} is not a comma-separated list of numbers, e.g. 0.125,0.25,0.5,1"
        ) from None
    if not values:
        raise ConfigError(f"--{what} is empty; give e.g. 0.125,0.25,0.5,1")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="test accuracy, PGD robustness, cost and communication rows of one run",
        description=(
            "Evaluate the best-validation model of a finished run (RUN/run.json, best.pt, log.csv, "
            "comm.csv) on every client's test set and write long-format rows (docs/evaluation.md)."
        ),
    )
    p.add_argument("--run", required=True, type=Path, help="run directory (results/D/S/M/seedN)")
    p.add_argument("--widths", default=None, help="comma list, default: the method's eval widths")
    p.add_argument(
        "--lams",
        default=None,
        help="dual-BN test lambdas, comma list; default adv.test_lams when trained with AT",
    )
    p.add_argument(
        "--attack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="robust accuracy under L-inf PGD (default on)",
    )
    p.add_argument("--out", type=Path, default=None, help="rows file (default RUN/eval.csv)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's)")
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default: the run's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitmix.evaluate.run import EVAL, EvalOptions, evaluate_run

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    options = EvalOptions(
        widths=parse_floats(args.widths, "widths") if args.widths else None,
        lams=parse_floats(args.lams, "lams") if args.lams else None,
        attack=args.attack,
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
    )
    out = args.out or args.run / EVAL
    df = evaluate_run(args.run, options, out=out)
    acc = df[(df["metric"] == "acc") & (df["client"] == "mean") & (df["domain"] == "all")]
    summary = ", ".join(
        f"x{r.width:g}{'' if math.isnan(r.lam) else f' λ={r.lam:g}'} {r.value:.3f}"
        for r in acc.itertuples()
    )
    print(f"wrote {len(df)} rows to {out} (mean test acc: {summary})")
    return 0
