"""The claims check as files: ``claims.md`` for people (one section per paper, that is per claims
file), ``claims.csv`` for tools, one summary line per paper.

Every verdict is printed with the numbers behind it (means, standard deviations, the seed spread,
the margin, the seeds), so a reader can redo the comparison without the rows.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from splitmix.report.claims import VERDICTS, Part, Verdict, fmt_value
from splitmix.report.spread import SPREAD_DEFINITION

CSV_COLUMNS = (
    "paper",
    "claims_file",
    "claim",
    "dataset",
    "split",
    "claim_verdict",
    "check",
    "kind",
    "description",
    "method_a",
    "width_a",
    "method_b",
    "width_b",
    "metric",
    "seeds",
    "a_mean",
    "a_std",
    "b_mean",
    "b_std",
    "difference",
    "spread",
    "margin",
    "verdict",
    "reason",
)
RULES = (
    f"Numbers are means over the seeds both sides have; {SPREAD_DEFINITION}. A comparison "
    "`above` holds when mean(a) − mean(b) > margin, `below` when it is < −margin, `not_below` "
    "when it is ≥ −margin, `not_above` when it is ≤ margin; the margin is a number or the seed "
    "spread. A point dominates another when it is at least as high in both coordinates and "
    "higher in one. A claim is *not testable* when a run it relies on was flagged as "
    "under-trained by the evaluation, otherwise *not held* when any of its checks fails, "
    "otherwise *not testable* when rows it needs are missing, otherwise *held*."
)


def counts(verdicts: list[Verdict]) -> dict[str, int]:
    return {v: sum(x.verdict == v for x in verdicts) for v in VERDICTS}


@dataclass
class Section:
    """The verdicts of one claims file: one paper's claims."""

    path: Path
    paper: str
    verdicts: list[Verdict]


def tally(verdicts: list[Verdict]) -> str:
    n = counts(verdicts)
    return ", ".join(f"{n[v]} {v}" for v in VERDICTS)


def summary_line(section: Section, md_path: Path) -> str:
    """``claims of Split-Mix (...): 7 held, 0 not held, 0 not testable -> .../claims.md``."""
    return f"claims of {section.paper}: {tally(section.verdicts)} -> {md_path}"


def _seeds(seeds: tuple[int, ...]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + (", ".join(map(str, seeds)) or "none")


def _pm(metric: str, mean: float, std: float) -> str:
    if math.isnan(std) or std == 0:
        return fmt_value(metric, mean)
    if fmt_value(metric, 0.5).endswith("%"):  # a fraction: both in percent
        return f"{100 * mean:.2f} ± {100 * std:.2f}%"
    return f"{fmt_value(metric, mean)} ± {fmt_value(metric, std)}"


def part_text(p: Part) -> str:
    """One line with the numbers behind a check and its verdict."""
    if p.kind != "compare" or math.isnan(p.difference):
        body = p.reason
    else:
        margin = fmt_value(p.metric, p.margin, diff=True) if not math.isnan(p.margin) else "–"
        spread = fmt_value(p.metric, p.spread, diff=True) if not math.isnan(p.spread) else "–"
        body = (
            f"{p.method_a} {_pm(p.metric, p.a_mean, p.a_std)} vs {p.method_b} "
            f"{_pm(p.metric, p.b_mean, p.b_std)} ({_seeds(p.seeds)}): difference "
            f"{fmt_value(p.metric, p.difference, signed=True)}, seed spread {spread}, margin "
            f"{margin}; {p.reason}"
        )
    return f"{p.description}: **{p.verdict}**. {body}"


def to_markdown(sections: list[Section], md_path: Path, flagged: list[str], n_runs: int) -> str:
    out = [
        "# Claims check",
        "",
        f"The claims of {len(sections)} paper(s), one claims file each, checked against the "
        f"evaluation rows of {n_runs} runs.",
        "",
        "| paper | claims file | verdicts |",
        "|:--|:--|:--|",
        *(f"| {sec.paper} | `{sec.path}` | {tally(sec.verdicts)} |" for sec in sections),
        "",
        RULES,
        "",
    ]
    for sec in sections:
        out += [f"## {sec.paper}", "", f"Claims from `{sec.path}`: **{tally(sec.verdicts)}**.", ""]
        out += ["| claim | task | verdict | what is claimed |", "|:--|:--|:--|:--|"]
        for v in sec.verdicts:
            text = v.claim.text + (f" ({v.claim.source})" if v.claim.source else "")
            out.append(f"| {v.claim.id} | {v.dataset}/{v.split} | {v.verdict} | {text} |")
        out.append("")
        for v in sec.verdicts:
            out += [
                f"### {v.claim.id} on {v.dataset}/{v.split}: {v.verdict}",
                "",
                v.claim.text,
                "",
            ]
            out += [
                f"- check {p.check}: {part_text(p)}" if p.kind else f"- {p.reason}" for p in v.parts
            ]
            out.append("")
    out += _flagged_section(flagged, n_runs)
    return "\n".join(out)


def _flagged_section(flagged: list[str], n_runs: int) -> list[str]:
    head = f"## Under-trained runs: {len(flagged)} of {n_runs}"
    if not flagged:
        return [head, "", "The evaluation flagged no run.", ""]
    return [
        head,
        "",
        "Flagged by the evaluation (validation accuracy still rising at the end of training, or "
        "test accuracy near chance); claims relying on them are not testable:",
        "",
        *[f"- {f}" for f in flagged],
        "",
    ]


def to_csv(sections: list[Section]) -> str:
    records = []
    for sec, v in ((s, v) for s in sections for v in s.verdicts):
        for p in v.parts:
            records.append(
                {
                    "paper": sec.paper,
                    "claims_file": str(sec.path),
                    "claim": v.claim.id,
                    "dataset": v.dataset,
                    "split": v.split,
                    "claim_verdict": v.verdict,
                    "check": p.check,
                    "kind": p.kind,
                    "description": p.description,
                    "method_a": p.method_a,
                    "width_a": p.width_a,
                    "method_b": p.method_b,
                    "width_b": p.width_b,
                    "metric": p.metric,
                    "seeds": " ".join(map(str, p.seeds)),
                    "a_mean": p.a_mean,
                    "a_std": p.a_std,
                    "b_mean": p.b_mean,
                    "b_std": p.b_std,
                    "difference": p.difference,
                    "spread": p.spread,
                    "margin": p.margin,
                    "verdict": p.verdict,
                    "reason": p.reason,
                }
            )
    buf = io.StringIO()
    frame = pd.DataFrame(records, columns=list(CSV_COLUMNS))
    frame.to_csv(buf, index=False, float_format="%.8g", lineterminator="\n")
    return buf.getvalue()
