"""``python -m splitmix report``: tables and figures from evaluation rows (no training)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CLAIMS = Path("config/claims.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write Table 1, figures and manifest.json from evaluation rows",
        description=(
            "Regenerate Table 1 (CSV, Markdown, LaTeX) and every figure whose rows exist from "
            "eval.csv files and the run.json beside each; runs no training. Prints which figures "
            "were made and which were skipped, and why."
        ),
    )
    p.add_argument(
        "--rows",
        action="append",
        default=None,
        metavar="GLOB",
        help="eval.csv files, '**' recursive (repeatable; default 'results/**/eval.csv')",
    )
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (figures/)")
    p.add_argument("--formats", default="png,pdf", help="figure formats: png,pdf,svg (png,pdf)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated method globs for Table 1 and the method-comparison figures "
        "(e.g. 'fedavg_x*,sheterofl,splitmix'); default: every non-AT method at its algorithm's "
        "usual budgets/participation/BN settings",
    )
    p.add_argument(
        "--only", default=None, help="comma-separated figure kinds to build (default: all)"
    )
    p.add_argument(
        "--claims",
        default=None,
        metavar="FILE",
        help=f"claims file to check into claims.md/claims.csv (docs/claims.md); 'none' skips it "
        f"(default: {DEFAULT_CLAIMS} if it exists)",
    )
    p.set_defaults(func=_run)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def claims_path(text: str | None) -> Path | None:
    """--claims: a file, 'none', or (absent) the default file if the current folder has one."""
    if text is None:
        return DEFAULT_CLAIMS if DEFAULT_CLAIMS.is_file() else None
    return None if text.strip().lower() == "none" else Path(text)


def _run(args: argparse.Namespace) -> int:
    from splitmix.errors import ConfigError
    from splitmix.report.build import make_report, parse_formats
    from splitmix.report.figures import BUILDERS

    only = _split(args.only)
    if only and (bad := [k for k in only if k not in BUILDERS]):
        raise ConfigError(
            f"--only {bad[0]!r} is not a figure kind; choose from {', '.join(BUILDERS)}"
        )
    report = make_report(
        args.rows or ["results/**/eval.csv"],
        args.out,
        parse_formats(args.formats),
        methods=_split(args.methods),
        only=only,
        claims=claims_path(args.claims),
    )
    for path in report.tables:
        print(f"table   {path}")
    for name, files, _ in report.made:
        print(f"made    {name} ({', '.join(p.suffix[1:] for p in files)})")
    if report.excluded:
        print(
            "note    variant methods left out of Table 1 and the method-comparison figures "
            f"(they differ in budgets/participation/BN; see their own figures; choose with "
            f"--methods): {', '.join(report.excluded)}"
        )
    for name, reason in report.skipped:
        print(f"skipped {name}: {reason}")
    for path in report.claims:
        print(f"claims  {path}")
    print(f"manifest {args.out / 'manifest.json'}")
    for line in report.summary:
        print(line)
    return 0
