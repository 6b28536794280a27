"""``python -m splitmix evaluate``: evaluation rows of one finished training run."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from splitmix.config import AdvConfig
from splitmix.errors import ConfigError
from splitmix.evaluate.deployment import LATENCY_BATCH, DeployOptions
from splitmix.evaluate.flags import FlagRule


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


def parse_intensity(text: str, what: str) -> float:
    """``"8/255"`` or ``"0.0314"`` -> a float in [0, 1]; one-line ConfigError otherwise."""
    num, _, den = text.partition("/")
    try:
        value = float(num) / (float(den) if den else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--{what} {text!r} is not a number or a fraction like 8/255") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--{what} {text!r} is outside [0, 1] (inputs are in [0, 1]); e.g. 8/255")
    return value


def pgd_settings(args: argparse.Namespace) -> AdvConfig:
    """The evaluation attack from the --pgd-* flags (defaults: the paper's PGD-7, eps 8/255)."""
    if args.pgd_steps < 1:
        raise ConfigError(f"--pgd-steps {args.pgd_steps} must be >= 1 (the paper uses 7)")
    eps = parse_intensity(args.pgd_eps, "pgd-eps")
    step = (
        None if args.pgd_step_size is None else parse_intensity(args.pgd_step_size, "pgd-step-size")
    )
    return AdvConfig(eps=eps, steps=args.pgd_steps, step_size=step)


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
    p.add_argument(
        "--pgd-steps",
        type=int,
        default=7,
        help="PGD iterations of --attack (default 7, as the paper)",
    )
    p.add_argument("--pgd-eps", default="8/255", help="PGD L-inf radius (default 8/255)")
    p.add_argument(
        "--pgd-step-size",
        default=None,
        help="PGD step (default: min(1.25 eps, eps + 4/255) / steps, the original's rule)",
    )
    rule = FlagRule()
    p.add_argument(
        "--flag-window",
        type=int,
        default=rule.window,
        help=f"under-training flag: validations compared, last k vs the k before ({rule.window})",
    )
    p.add_argument(
        "--flag-rise",
        type=float,
        default=rule.rise,
        help=f"flag a run whose validation accuracy rose more than this ({rule.rise:g})",
    )
    p.add_argument(
        "--flag-noise",
        type=float,
        default=rule.noise_z,
        help=f"...and more than this many standard errors of one validation ({rule.noise_z:g})",
    )
    p.add_argument(
        "--flag-chance",
        type=float,
        default=rule.chance_margin,
        help=f"flag accuracy <= 1/classes + this ({rule.chance_margin:g})",
    )
    p.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time every width's deployed model at batch 1 and --latency-batch (default on)",
    )
    p.add_argument(
        "--latency-batch",
        type=int,
        default=LATENCY_BATCH,
        help=f"the larger batch of the latency rows (default {LATENCY_BATCH})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="rows file (default RUN/eval.csv; its record goes beside it as .json)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the run's)")
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default: the run's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitmix.evaluate.run import EVAL, EvalOptions, evaluate_run

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads} must be >= 1")
    if args.latency_batch < 1:
        raise ConfigError(f"--latency-batch {args.latency_batch} must be >= 1, e.g. 32")
    options = EvalOptions(
        widths=parse_floats(args.widths, "widths") if args.widths else None,
        lams=parse_floats(args.lams, "lams") if args.lams else None,
        attack=args.attack,
        pgd=pgd_settings(args),
        threads=args.threads,
        device=args.device,
        progress=not args.no_progress,
        flags=FlagRule(args.flag_window, args.flag_rise, args.flag_chance, args.flag_noise),
        deploy=DeployOptions(latency=args.latency, latency_batch=args.latency_batch),
    )
    out = args.out or args.run / EVAL
    if out.is_dir():  # checked before the evaluation, which can take a long time
        raise ConfigError(f"--out {out} is a folder; give the rows file, e.g. {out / EVAL}")
    df = evaluate_run(args.run, options, out=out)
    acc = df[(df["metric"] == "acc") & (df["client"] == "mean") & (df["domain"] == "all")]
    summary = ", ".join(
        f"x{r.width:g}{'' if math.isnan(r.lam) else f' λ={r.lam:g}'} {r.value:.3f}"
        for r in acc.itertuples()
    )
    print(f"wrote {len(df)} rows to {out} (mean test acc: {summary})")
    return 0
