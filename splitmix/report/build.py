"""Build the whole report (Table 1, the claims check, every figure whose rows exist, the summary
lines and the manifest) from rows alone.

No training and no model evaluation happen here: the inputs are evaluation rows and the run
records beside them. Everything is rewritten on every call (it is cheap), atomically; figure files
that an earlier report listed in its manifest but that this report skips are removed, so the folder
never shows a figure that the current rows no longer support.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import pandas as pd

from splitmix.atomic import atomic_write_text
from splitmix.errors import ConfigError
from splitmix.report import claims_out
from splitmix.report import figures as F
from splitmix.report.claims import Claim, check_claims, paper_name, read_claims
from splitmix.report.flags import flagged_runs, run_flags
from splitmix.report.load import load_rows, reference_methods
from splitmix.report.outputs import save_figure
from splitmix.report.rst import caption_file, write_caption, write_markdown_fragments
from splitmix.report.tables import build_table1, to_csv, to_latex, to_markdown

FORMATS = ("png", "pdf", "svg")
MANIFEST = "manifest.json"
TABLE_FILES = ("table1.csv", "table1.md", "table1.tex")
# Figures that compare methods side by side honour --methods; variant figures use every run.
METHOD_FIGURES = ("convergence", "per_domain", "client_stats", "flops_accuracy", "latency_accuracy")
CLAIM_FILES = ("claims.md", "claims.csv")
SUMMARY = (
    "summary.txt"  # the lines `snakemake` prints when the run ends (workflow/rules/report.smk)
)
CLAIMS_CAPTION = (
    "Claims check: each claim of the claims file with the numbers behind it (means, seed "
    "spread, seeds) and its verdict: held, not held, or not testable (missing rows, or a run it "
    "relies on flagged as under-trained)."
)
TABLE_CAPTION = (
    "Table 1: test accuracy [%] (mean ± std over seeds of the unweighted client mean), MACs per "
    "sample and parameters per width, per method and task; FedAvg widths wider than the smallest "
    "client budget are marked as violating the budget."
)


@dataclass
class Report:
    tables: list[Path] = field(default_factory=list)
    made: list[tuple[str, list[Path], str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # variant methods left out of Table 1
    claims: list[Path] = field(default_factory=list)  # claims.md, claims.csv (if checked)
    summary: list[str] = field(default_factory=list)  # the lines of summary.txt


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ConfigError(
            f"--formats {text!r} is invalid; use a comma-separated subset of {', '.join(FORMATS)}"
        )
    return fmts


def select_methods(rows: pd.DataFrame, patterns: list[str] | None) -> pd.DataFrame:
    """Rows of methods matching any glob in ``patterns`` (None = all)."""
    if not patterns:
        return rows
    methods = sorted(rows["method"].unique())
    keep = [m for m in methods if any(fnmatch.fnmatchcase(m, p) for p in patterns)]
    if not keep:
        raise ConfigError(
            f"--methods {','.join(patterns)!r} matches none of the methods in the rows: "
            f"{', '.join(methods)}"
        )
    return rows[rows["method"].isin(keep)]


def _old_figure_files(out: Path) -> set[str]:
    try:
        old = json.loads((out / MANIFEST).read_text())
        entries = old.get("figures", [])
        return {f for e in entries for f in [*e.get("files", []), e.get("caption_file")] if f}
    except (OSError, ValueError, AttributeError):
        return set()


def make_report(
    rows_glob: str | list[str],
    out: Path,
    formats: tuple[str, ...] = ("png", "pdf"),
    methods: list[str] | None = None,
    only: list[str] | None = None,
    claims: Path | list[Path] | None = None,
) -> Report:
    """Write Table 1, the claims check, the figures, ``summary.txt`` and ``manifest.json`` into
    ``out``; return what was done.

    ``methods`` (globs) picks the methods of Table 1 and the method-comparison figures; without
    it they show every non-AT method at its algorithm's usual settings (``reference_methods``).
    ``claims``: the claims file(s) to check, one paper each (docs/claims.md); None or an empty
    list writes no claims files.
    """
    out = Path(out)
    paths = [claims] if isinstance(claims, str | Path) else list(claims or [])
    declared = [(Path(p), read_claims(Path(p))) for p in paths]  # a bad file fails first
    rows = load_rows(rows_glob)
    report = Report()
    _write_claims(out, rows, declared, report)
    if methods:
        chosen = select_methods(rows, methods)
    else:
        chosen, report.excluded = reference_methods(rows)
    table = build_table1(chosen)
    if table.empty:  # the files are still written: a workflow expects them
        report.skipped.append(("table1", "no client-mean test acc rows of non-AT runs"))
    for name, text in zip(
        TABLE_FILES, (to_csv(table), to_markdown(table), to_latex(table)), strict=True
    ):
        atomic_write_text(out / name, text)
        report.tables.append(out / name)
    builders = {k: v for k, v in F.BUILDERS.items() if not only or k in only}
    with mpl.rc_context(F.STYLE):
        for kind, builder in builders.items():
            for result in builder(chosen if kind in METHOD_FIGURES else rows):
                if isinstance(result, F.Skipped):
                    report.skipped.append((result.name, result.reason))
                    continue
                files = save_figure(result.fig, out / result.name, formats)
                # the caption snakemake --report shows beside this figure (workflow/report/)
                write_caption(out / result.name, result.caption, files)
                report.made.append((result.name, files, result.caption))
    atomic_write_text(out / SUMMARY, "".join(f"{line}\n" for line in report.summary))
    _write_manifest(out, report, rows_glob)
    write_markdown_fragments(out)  # last: every table written above gets its fragment
    return report


def _write_claims(
    out: Path, rows: pd.DataFrame, declared: list[tuple[Path, list[Claim]]], report: Report
) -> None:
    """claims.md and claims.csv (or remove an earlier report's), and the summary lines: one per
    paper, then the under-trained runs."""
    flags = run_flags(rows)
    flagged = flagged_runs(flags, flags)
    md_path = out / CLAIM_FILES[0]
    if declared:
        sections = [
            claims_out.Section(path, paper_name(claims, path), check_claims(rows, claims, flags))
            for path, claims in declared
        ]
        texts = (
            claims_out.to_markdown(sections, md_path, flagged, len(flags)),
            claims_out.to_csv(sections),
        )
        for name, text in zip(CLAIM_FILES, texts, strict=True):
            atomic_write_text(out / name, text)
            report.claims.append(out / name)
        report.summary += [claims_out.summary_line(sec, md_path) for sec in sections]
    else:
        # a report without claims must not show an old verdict (nor its snakemake --report page)
        for name in (*CLAIM_FILES, caption_file(Path(CLAIM_FILES[0]).stem)):
            (out / name).unlink(missing_ok=True)
    report.summary.append(
        f"under-trained: {len(flagged)} of {len(flags)} runs flagged -> {out / TABLE_FILES[1]}"
    )


def _write_manifest(out: Path, report: Report, rows_glob: str | list[str]) -> None:
    old = _old_figure_files(out)
    new = {p.name for _, files, _ in report.made for p in files}
    new |= {caption_file(name) for name, _, _ in report.made}
    for stale in sorted(old - new):
        path = out / stale
        if path.parent == out and path.is_file():  # only files an earlier report wrote here
            path.unlink()
    manifest = {
        "rows": rows_glob,
        "tables": [{"name": "table1", "files": list(TABLE_FILES), "caption": TABLE_CAPTION}]
        + (
            [
                {
                    "name": "claims",
                    "files": [p.name for p in report.claims],
                    "caption": CLAIMS_CAPTION,
                }
            ]
            if report.claims
            else []
        ),
        "summary": report.summary,
        "figures": [
            {
                "name": name,
                "files": [p.name for p in files],
                "caption": caption,
                "caption_file": caption_file(name),
            }
            for name, files, caption in report.made
        ],
        "skipped": [{"name": n, "reason": r} for n, r in report.skipped],
        "variant_methods_not_in_table1": report.excluded,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
