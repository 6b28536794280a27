"""``python -m splitmix report``: tables and figures from evaluation rows (no training)."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from splitmix.errors import ConfigError

# the Split-Mix paper's claims, then one file per other paper (docs/claims.md)
DEFAULT_CLAIMS = ("config/claims.yaml", "config/claims/*.yaml")


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
        action="append",
        default=None,
        metavar="FILE",
        help="claims file (or glob) to check into claims.md/claims.csv, one paper each "
        "(docs/claims.md; repeatable); 'none' skips the check (default: "
        f"{' and '.join(DEFAULT_CLAIMS)}, the files of those that exist)",
    )
    p.set_defaults(func=_run)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def claims_paths(given: list[str] | None) -> list[Path]:
    """--claims: files and globs in order (a glob matching nothing is an error, a file that does
    not exist is named by the claims reader), 'none', or (absent) the default files that exist."""
    if given is None:
        return [p for pat in DEFAULT_CLAIMS for p in sorted(Path().glob(pat)) if p.is_file()]
    if any(g.strip().lower() == "none" for g in given):
        return []
    out: list[Path] = []
    for g in given:
        if glob.has_magic(g):
            found = sorted(Path(p) for p in glob.glob(g))
            if not found:
                raise ConfigError(f"--claims {g!r} matches no file; name a claims file or 'none'")
            out += found
        else:
            out.append(Path(g))
    return list(dict.fromkeys(out))


def _run(args: argparse.Namespace) -> int:
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
        claims=claims_paths(args.claims),
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
