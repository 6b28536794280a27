"""``python -m splitmix train``: one training run of an experiment config."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one (dataset, split, method, seed) of an experiment config",
        description=(
            "Train one run; resumes from OUT/checkpoint.pt when it exists with the same config. "
            "Writes checkpoint.pt, best.pt, log.csv, comm.csv and run.json into OUT."
        ),
    )
    p.add_argument("--config", required=True, type=Path, help="experiment YAML file")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output dir (default runs/D/S/M/seedN; results/ belongs to the workflow)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run-config field, e.g. rounds=5, adv.lam=0.5, split_config.val_ratio=0.3",
    )
    p.add_argument("--restart", action="store_true", help="discard earlier outputs in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--expect-hash",
        metavar="HASH",
        help="refuse to train unless the resolved run has this config hash (the workflow passes "
        "the hash its DAG recorded); a checkpoint of another config in OUT is then discarded",
    )
    p.set_defaults(func=run)


def default_out(dataset: str, split: str, method: str, seed: int) -> Path:
    """A hand run's folder: never one of the workflow's results/ folders, so trying a run by
    hand cannot rewrite (or "resume") what the workflow built."""
    return Path("runs") / dataset / split / method / f"seed{seed}"


def run(args: argparse.Namespace) -> int:
    from splitmix.errors import ConfigError
    from splitmix.experiment import load_experiment, resolve_run
    from splitmix.training import run_training

    exp = load_experiment(args.config)
    # validated as a whole, --set included, before OUT is created: a refused run writes nothing
    source = str(args.config) + (" with --set " + " ".join(args.sets) if args.sets else "")
    cfg = resolve_run(
        exp, args.dataset, args.split, args.method, args.seed, sets=args.sets, source=source
    )
    if args.expect_hash and cfg.config_hash() != args.expect_hash:
        raise ConfigError(
            f"run {args.dataset}/{args.split}/{args.method}/seed{args.seed} of {args.config} has "
            f"config hash {cfg.config_hash()}, not the {args.expect_hash} it was scheduled with; "
            "rerun snakemake so that the job is scheduled again"
        )
    out = args.out or default_out(args.dataset, args.split, args.method, args.seed)
    result = run_training(
        cfg,
        out,
        progress=not args.no_progress,
        restart=args.restart,
        discard_stale=bool(args.expect_hash),
    )
    print(
        f"done: {out} best round {result['best_round']} metric {result['best_metric']:.4f} "
        f"({result.get('wall_time_s', 0.0):.1f}s)"
    )
    return 0
