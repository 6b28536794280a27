"""A paper's qualitative claims, declared as data and checked against evaluation rows.

The claims file (``config/claims.yaml``; docs/claims.md) names methods, widths, metrics and one of
a few comparison kinds; nothing here knows a method by name, so another paper's claims are another
file. Every claim is a conjunction of checks, evaluated on each task (dataset, split) of the rows
that its ``dataset``/``split`` globs match:

* ``compare``: the per-seed value of side ``a`` against side ``b`` (a metric, or the sum of
  several, at a width), over the seeds both have; ``relation`` ``above`` | ``below`` |
  ``not_below`` | ``not_above`` with a ``margin`` that is a number or ``spread`` (the seed spread,
  ``splitmix.report.spread``).
* ``not_dominated``: the points (x, y) of side ``a`` over its test lambdas (a dual-BN model's
  curve) against the points of the ``b`` sides; a point dominates another if it is >= in both
  coordinates and > in one. ``require: every_point`` (no point of ``a`` dominated) or
  ``some_point``.

A check is *not testable* when rows are missing (the reason names them), when the runs it reads
disagree on a setting it requires to be the same, or when one of those runs was flagged as
under-trained by the evaluation (the flagged runs are named). A claim is not testable if any run
it relies on is flagged, else not held if any check is not held, else not testable if any check
is, else held.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from splitmix.errors import ConfigError
from splitmix.report.flags import flagged_runs, run_flags
from splitmix.report.labels import width_label
from splitmix.report.load import ALL_DOMAINS, MEAN_CLIENT, RUN_KEYS, TEST_ROUND
from splitmix.report.spread import seed_spread, seed_std

HELD, NOT_HELD, NOT_TESTABLE = "held", "not held", "not testable"
VERDICTS = (HELD, NOT_HELD, NOT_TESTABLE)
KINDS = ("compare", "not_dominated")
RELATIONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    # difference d = mean(a) - mean(b), margin m >= 0
    "above": (lambda d, m: d > m, "difference > margin"),
    "below": (lambda d, m: d < -m, "difference < -margin"),
    "not_below": (lambda d, m: d >= -m, "difference >= -margin"),
    "not_above": (lambda d, m: d <= m, "difference <= margin"),
}
REQUIRES = ("every_point", "some_point")
SPREAD = "spread"
_EPS = 1e-9


# ---- the claims file --------------------------------------------------------------------------
@dataclass(frozen=True)
class Side:
    """The runs one side of a check reads: a method, optionally at a fixed width and lambda, or
    (``sum_of``) several methods whose per-seed values are added up, e.g. one model per width."""

    method: str  # the method, or the names of ``sum_of`` joined by " + "
    width: float | None = None  # None: the check's widths (compare) or the widest (not_dominated)
    lam: float | None = None  # dual-BN rows: the test lambda (default 0, clean BN)
    respects_budget: bool = False  # the check needs these runs within every client's budget
    sum_of: tuple[str, ...] = ()

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods whose runs this side reads."""
        return self.sum_of or (self.method,)


@dataclass(frozen=True)
class Check:
    kind: str
    a: Side
    b: tuple[Side, ...]
    metric: tuple[str, ...] = ("acc",)  # compare: the per-seed value is the sum of these
    widths: tuple[float | None, ...] = (None,)
    relation: str = "above"
    margin: float | str = 0.0
    factor: float = 1.0  # compare: a is compared with factor x b
    same: tuple[str, ...] = ()  # run settings (run.json columns) a and b must share
    x: str = "acc"
    y: str = "robust_acc"
    require: str = "every_point"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    checks: tuple[Check, ...]
    dataset: str = "*"
    split: str = "*"
    source: str = ""
    paper: str = ""  # the file's paper: every claim of one file comes from one paper
    setting: str = ""  # where the claim can be tested, printed when no task of the rows matches


_SIDE_KEYS = {"method", "sum_of", "width", "lam", "respects_budget"}
_CHECK_KEYS = {
    "compare": {"kind", "a", "b", "metric", "widths", "relation", "margin", "factor", "same"},
    "not_dominated": {"kind", "a", "b", "x", "y", "require"},
}
_CLAIM_KEYS = {"id", "text", "checks", "dataset", "split", "source", "setting"}
_FILE_KEYS = {"paper", "dataset", "split", "setting", "claims"}


class _Where:
    """Builds one-line errors that name the file and the place in it."""

    def __init__(self, path: Path, place: str = "") -> None:
        self.path, self.place = path, place

    def at(self, place: str) -> _Where:
        return _Where(self.path, f"{self.place}.{place}" if self.place else place)

    def error(self, message: str) -> ConfigError:
        where = f" at {self.place}" if self.place else ""
        return ConfigError(f"claims file {self.path}{where}: {message} (see docs/claims.md)")


def _mapping(value: Any, keys: set[str], where: _Where, required: tuple[str, ...]) -> dict:
    if not isinstance(value, Mapping):
        raise where.error(f"expected a mapping with keys {', '.join(sorted(keys))}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise where.error(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(keys))}")
    missing = [k for k in required if k not in value]
    if missing:
        raise where.error(f"missing key {missing[0]!r}")
    return dict(value)


def _number(value: Any, where: _Where) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise where.error(f"{value!r} is not a number")
    return float(value)


def _text(value: Any, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"{value!r} is not a non-empty text")
    return value


def _side(value: Any, where: _Where) -> Side:
    if isinstance(value, str):
        value = {"method": value}
    d = _mapping(value, _SIDE_KEYS, where, ())
    if ("method" in d) == ("sum_of" in d):
        raise where.error("a side needs exactly one of 'method' or 'sum_of'")
    width = d.get("width")
    lam = d.get("lam")
    budget = d.get("respects_budget", False)
    if not isinstance(budget, bool):
        raise where.at("respects_budget").error(f"{budget!r} is not true or false")
    summed: tuple[str, ...] = ()
    if "sum_of" in d:
        if not isinstance(d["sum_of"], list) or len(d["sum_of"]) < 2:
            raise where.at("sum_of").error("expected a list of two or more method names")
        summed = _names(d["sum_of"], where.at("sum_of"))
    return Side(
        f"({' + '.join(summed)})" if summed else _text(d["method"], where.at("method")),
        None if width is None else _number(width, where.at("width")),
        None if lam is None else _number(lam, where.at("lam")),
        budget,
        summed,
    )


def _names(value: Any, where: _Where) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(_text(v, where) for v in items)


def _check(value: Any, where: _Where) -> Check:
    kind = value.get("kind") if isinstance(value, Mapping) else None
    if kind not in KINDS:
        raise where.at("kind").error(f"{kind!r} is not a check kind; allowed: {', '.join(KINDS)}")
    d = _mapping(value, _CHECK_KEYS[kind], where, ("kind", "a", "b"))
    a = _side(d["a"], where.at("a"))
    b_raw = d["b"] if isinstance(d["b"], list) else [d["b"]]
    b = tuple(_side(v, where.at(f"b[{i}]")) for i, v in enumerate(b_raw))
    if not b or (kind == "compare" and len(b) != 1):
        raise where.at("b").error("compare needs exactly one side b" if b else "b is empty")
    if kind == "not_dominated":
        if any(side.sum_of for side in (a, *b)):
            raise where.error("sum_of sides are for compare checks; not_dominated reads points")
        require = d.get("require", "every_point")
        if require not in REQUIRES:
            raise where.at("require").error(f"{require!r}; allowed: {', '.join(REQUIRES)}")
        x, y = (
            _text(d.get(k, dflt), where.at(k)) for k, dflt in (("x", "acc"), ("y", "robust_acc"))
        )
        return Check(kind, a, b, x=x, y=y, require=require)
    relation = d.get("relation", "above")
    if relation not in RELATIONS:
        raise where.at("relation").error(
            f"{relation!r} is not a relation; allowed: {', '.join(RELATIONS)}"
        )
    margin = d.get("margin", 0.0)
    if margin != SPREAD:
        margin = _number(margin, where.at("margin"))
        if margin < 0:
            raise where.at("margin").error(f"{margin!r} must be >= 0 (or '{SPREAD}')")
    factor = _number(d.get("factor", 1.0), where.at("factor"))
    if not factor > 0:
        raise where.at("factor").error(f"{factor!r} must be > 0")
    widths = d.get("widths")
    widths = (None,) if widths is None else tuple(
        _number(w, where.at("widths")) for w in (widths if isinstance(widths, list) else [widths])
    )  # fmt: skip
    return Check(
        kind,
        a,
        b,
        metric=_names(d.get("metric", "acc"), where.at("metric")),
        widths=widths,
        relation=relation,
        margin=margin,
        factor=factor,
        same=_names(d["same"], where.at("same")) if "same" in d else (),
    )


def parse_claims(data: Any, path: Path) -> list[Claim]:
    """The claims of a parsed YAML document; one-line ConfigError naming the place otherwise."""
    where = _Where(path)
    d = _mapping(data, _FILE_KEYS, where, ("claims",))
    if not isinstance(d["claims"], list) or not d["claims"]:
        raise where.at("claims").error("expected a non-empty list of claims")
    claims, seen = [], set()
    for i, raw in enumerate(d["claims"]):
        w = where.at(f"claims[{i}]")
        c = _mapping(raw, _CLAIM_KEYS, w, ("id", "text", "checks"))
        cid = _text(str(c["id"]), w.at("id"))
        if cid in seen:
            raise w.at("id").error(f"duplicate id {cid!r}")
        seen.add(cid)
        if not isinstance(c["checks"], list) or not c["checks"]:
            raise w.at("checks").error("expected a non-empty list of checks")
        checks = tuple(_check(ch, w.at(f"checks[{j}]")) for j, ch in enumerate(c["checks"]))
        claims.append(
            Claim(
                cid,
                " ".join(_text(c["text"], w.at("text")).split()),
                checks,
                dataset=_text(c.get("dataset", d.get("dataset", "*")), w.at("dataset")),
                split=_text(c.get("split", d.get("split", "*")), w.at("split")),
                source=str(c.get("source", "")),
                paper=str(d.get("paper", "")),
                setting=" ".join(str(c.get("setting", d.get("setting", ""))).split()),
            )
        )
    return claims


def paper_name(claims: list[Claim], path: Path) -> str:
    """The paper a claims file states (its ``paper`` key), else the file's name."""
    return next((c.paper for c in claims if c.paper), Path(path).stem)


def read_claims(path: Path) -> list[Claim]:
    """Read and check a claims file (one-line ConfigError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"claims file {path} does not exist; pass --claims with an existing file "
            "(e.g. config/claims.yaml) or --claims none"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"claims file {path}: not valid YAML{line}") from None
    return parse_claims(data, path)


# ---- results ----------------------------------------------------------------------------------
@dataclass
class Part:
    """One check at one width on one task: the numbers behind it and its verdict."""

    check: int
    kind: str
    description: str
    verdict: str = NOT_TESTABLE
    reason: str = ""
    seeds: tuple[int, ...] = ()
    a_mean: float = math.nan
    a_std: float = math.nan
    b_mean: float = math.nan
    b_std: float = math.nan
    difference: float = math.nan
    spread: float = math.nan
    margin: float = math.nan
    method_a: str = ""
    width_a: float = math.nan
    method_b: str = ""
    width_b: float = math.nan
    metric: str = ""
    flagged: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    """One claim on one task."""

    claim: Claim
    dataset: str
    split: str
    verdict: str
    parts: list[Part]


def combine(parts: list[Part]) -> str:
    """The claim's verdict from its parts (rule in the module docstring)."""
    if any(p.flagged for p in parts):
        return NOT_TESTABLE
    verdicts = {p.verdict for p in parts}
    for v in (NOT_HELD, NOT_TESTABLE):
        if v in verdicts:
            return v
    return HELD


def check_claims(
    rows: pd.DataFrame, claims: list[Claim], flags: pd.DataFrame | None = None
) -> list[Verdict]:
    """Evaluate every claim on every task its globs match (rows as ``load_rows`` returns);
    ``flags``: ``run_flags(rows)`` if the caller already has it."""
    if flags is None:
        flags = run_flags(rows)
    tasks = sorted(set(zip(rows["dataset"], rows["split"], strict=True)))
    out = []
    for claim in claims:
        matched = [
            t
            for t in tasks
            if fnmatch.fnmatchcase(t[0], claim.dataset) and fnmatch.fnmatchcase(t[1], claim.split)
        ]
        if not matched:
            reason = f"no rows of task {claim.dataset}/{claim.split}"
            if claim.setting:
                reason += f"; the claim's setting: {claim.setting}"
            part = Part(0, "", "", reason=reason)
            out.append(Verdict(claim, claim.dataset, claim.split, NOT_TESTABLE, [part]))
            continue
        for dataset, split in matched:
            task = rows[(rows["dataset"] == dataset) & (rows["split"] == split)]
            parts = [
                p
                for i, check in enumerate(claim.checks)
                for p in _evaluate(i + 1, check, task, flags)
            ]
            out.append(Verdict(claim, dataset, split, combine(parts), parts))
    return out


def _evaluate(i: int, check: Check, task: pd.DataFrame, flags: pd.DataFrame) -> list[Part]:
    if check.kind == "compare":
        return [_compare(i, check, w, task, flags) for w in check.widths]
    return [_not_dominated(i, check, task, flags)]


# ---- per-seed values --------------------------------------------------------------------------
class Missing(Exception):
    """Rows a check needs are absent; the message says which."""


def _close(col: pd.Series, value: float) -> pd.Series:
    return (col - value).abs() < _EPS


def seed_values(task: pd.DataFrame, side: Side, metric: str, width: float | None) -> pd.Series:
    """Per-seed value of ``metric`` for one side: model-level rows (client empty) if the metric
    has them, else the evaluation's mean over all clients, else the mean of per-client rows; at
    ``width`` if the metric is per width, at ``side.lam`` (default 0) if it has test lambdas."""
    sel = task[(task["method"] == side.method)]
    if sel.empty:
        raise Missing(f"no rows of {side.method}")
    sel = sel[(sel["metric"] == metric) & (sel["round"] == TEST_ROUND)]
    if sel.empty:
        raise Missing(f"no {metric} rows of {side.method}")
    if sel["width"].notna().any():
        if width is None:
            raise Missing(f"{metric} is per width; give the check `widths` or the side a `width`")
        sel = sel[_close(sel["width"], width)]
        if sel.empty:
            raise Missing(f"no {metric} rows of {side.method} at {width_label(width)}")
    if sel["lam"].notna().any():
        lam = 0.0 if side.lam is None else side.lam
        sel = sel[_close(sel["lam"], lam)]
        if sel.empty:
            raise Missing(f"no {metric} rows of {side.method} at test λ={lam:g}")
    mean_rows = (sel["client"] == MEAN_CLIENT) & sel["domain"].isin(ALL_DOMAINS)
    for level in (sel["client"] == "", mean_rows):
        if level.any():
            return sel[level].groupby("seed")["value"].mean()
    per_client = sel[sel["client"] != MEAN_CLIENT]
    return per_client.groupby(["seed", "client"])["value"].mean().groupby("seed").mean()


def _added(parts: list[pd.Series]) -> pd.Series:
    """The sum of per-seed series over the seeds they all have."""
    seeds = sorted(set.intersection(*(set(p.index) for p in parts)))
    return sum(p.loc[seeds] for p in parts)


def side_values(task: pd.DataFrame, side: Side, metric: str, width: float | None) -> pd.Series:
    """``seed_values`` of one side; a ``sum_of`` side adds its methods' values seed by seed."""
    if not side.sum_of:
        return seed_values(task, side, metric, width)
    members = [Side(m, side.width, side.lam, side.respects_budget) for m in side.sum_of]
    return _added([seed_values(task, m, metric, width) for m in members])


def _summed(task: pd.DataFrame, side: Side, metrics: tuple[str, ...], width: float | None):
    return _added([side_values(task, side, m, width) for m in metrics])


def _flags_of(flags: pd.DataFrame, task: pd.DataFrame, methods: list[str], seeds) -> list[str]:
    dataset, split = task["dataset"].iloc[0], task["split"].iloc[0]
    keys = pd.DataFrame(
        [(dataset, split, m, int(s)) for m in methods for s in seeds], columns=list(RUN_KEYS)
    )
    return flagged_runs(flags, keys)


def _config(task: pd.DataFrame, side: Side, seeds, col: str) -> set[str]:
    runs = task[task["method"].isin(side.methods) & task["seed"].isin(seeds)]
    return {"" if pd.isna(v) else str(v) for v in runs.groupby(["method", "seed"])[col].first()}


def _violates(task: pd.DataFrame, side: Side, width: float | None, seeds) -> bool:
    runs = task[task["method"].isin(side.methods) & task["seed"].isin(seeds)]
    if width is not None and runs["width"].notna().any():
        runs = runs[_close(runs["width"], width) | runs["width"].isna()]
    return bool(runs["violates_budget"].any())


# ---- compare ----------------------------------------------------------------------------------
def _compare(i: int, check: Check, width: float | None, task, flags) -> Part:
    a, b = check.a, check.b[0]
    wa, wb = (
        (a.width if a.width is not None else width),
        (b.width if b.width is not None else width),
    )
    metric = "+".join(check.metric)
    label = {w: f" {width_label(w)}" if w is not None else "" for w in (wa, wb)}
    margin_text = "the seed spread" if check.margin == SPREAD else f"{check.margin:g}"
    scaled = f"{check.factor:g} × " if check.factor != 1.0 else ""
    part = Part(
        i,
        check.kind,
        f"{a.method}{label[wa]} {check.relation} {scaled}{b.method}{label[wb]} in {metric} "
        f"(margin {margin_text})",
        method_a=a.method,
        width_a=math.nan if wa is None else wa,
        method_b=f"{scaled}{b.method}",
        width_b=math.nan if wb is None else wb,
        metric=metric,
    )
    try:
        va, vb = _summed(task, a, check.metric, wa), _summed(task, b, check.metric, wb)
        vb = vb * check.factor
    except Missing as exc:
        part.reason = str(exc)
        return part
    seeds = tuple(sorted(set(va.index) & set(vb.index)))
    part.seeds = tuple(int(s) for s in seeds)
    if not seeds:
        part.reason = (
            f"no common seeds ({a.method}: {_seeds(va.index)}; {b.method}: {_seeds(vb.index)})"
        )
        return part
    va, vb = va.loc[list(seeds)], vb.loc[list(seeds)]
    part.a_mean, part.a_std = float(va.mean()), seed_std(va.to_numpy())
    part.b_mean, part.b_std = float(vb.mean()), seed_std(vb.to_numpy())
    part.difference = part.a_mean - part.b_mean
    part.spread = seed_spread(part.a_std, part.b_std)
    part.margin = part.spread if check.margin == SPREAD else float(check.margin)
    part.flagged = _flags_of(flags, task, [*a.methods, *b.methods], seeds)
    if reason := _precondition(check, task, seeds, wa, wb):
        part.reason = reason
    elif part.flagged:
        part.reason = _flagged_reason(part.flagged)
    elif math.isnan(part.margin):
        part.reason = "one common seed: no seed spread to compare with (run at least 2 seeds)"
    else:
        holds, rule = RELATIONS[check.relation]
        part.verdict = HELD if holds(part.difference, part.margin) else NOT_HELD
        part.reason = f"needs {rule}"
    return part


def _flagged_reason(flagged: list[str]) -> str:
    """The flagged runs by name; their reasons are listed once, under "Under-trained runs"."""
    names = ", ".join(f.split(":")[0] for f in flagged)
    return f"under-trained runs: {names} (reasons under Under-trained runs)"


def _precondition(check: Check, task, seeds, wa, wb) -> str:
    """Why the runs cannot be compared at all (budget, differing settings), or ''."""
    for side, w in ((check.a, wa), (check.b[0], wb)):
        if side.respects_budget and _violates(task, side, w, seeds):
            at = f" at {width_label(w)}" if w is not None else ""
            return f"{side.method}{at} trains clients beyond their budget"
    for col in check.same:
        if col not in task.columns:
            return f"setting {col!r} is not a run setting the report knows"
        va = _config(task, check.a, seeds, col)
        vb = _config(task, check.b[0], seeds, col)
        if "" in va | vb:
            return f"{col} of some runs is unknown (no run.json beside their eval.csv)"
        if va != vb or len(va) != 1:
            return f"{col} differ: {check.a.method} {sorted(va)}, {check.b[0].method} {sorted(vb)}"
    return ""


def _seeds(index) -> str:
    return ", ".join(str(int(s)) for s in sorted(index)) or "none"


# ---- not dominated ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    method: str
    width: float
    lam: float  # NaN: a model without test lambdas
    x: float
    y: float
    x_std: float
    y_std: float


def _widest(task: pd.DataFrame, side: Side, metric: str) -> float:
    if not (task["method"] == side.method).any():
        raise Missing(f"no rows of {side.method}")
    if side.width is not None:
        return side.width
    sel = task[(task["method"] == side.method) & (task["metric"] == metric)]["width"].dropna()
    if sel.empty:
        raise Missing(f"no {metric} rows of {side.method}")
    return float(sel.max())


def _points(task: pd.DataFrame, side: Side, check: Check, seeds: set[int] | None) -> list[Point]:
    """One point per test lambda of the side's runs (or the side's one lambda), seed means."""
    width = _widest(task, side, check.x)
    sel = task[(task["method"] == side.method) & (task["metric"] == check.x)]
    lams = sorted(set(sel["lam"].dropna())) if side.lam is None else [side.lam]
    out = []
    for lam in lams or [math.nan]:
        s = Side(side.method, width, None if math.isnan(lam) else lam)
        vx, vy = seed_values(task, s, check.x, width), seed_values(task, s, check.y, width)
        common = sorted(
            set(vx.index) & set(vy.index) & (seeds if seeds is not None else set(vx.index))
        )
        if not common:
            raise Missing(f"no seed of {side.method} has both {check.x} and {check.y}")
        vx, vy = vx.loc[common], vy.loc[common]
        out.append(
            Point(side.method, width, lam, float(vx.mean()), float(vy.mean()),
                  seed_std(vx.to_numpy()), seed_std(vy.to_numpy()))
        )  # fmt: skip
    return out


def dominates(q: Point, p: Point) -> bool:
    """q is at least as good as p in both coordinates and better in one."""
    return q.x >= p.x and q.y >= p.y and (q.x > p.x or q.y > p.y)


def _not_dominated(i: int, check: Check, task, flags) -> Part:
    methods = [check.a.method, *(s.method for s in check.b)]
    part = Part(
        i,
        check.kind,
        f"{check.a.method} ({check.x}, {check.y}) points not dominated by "
        f"{', '.join(methods[1:])} ({check.require.replace('_', ' ')})",
        method_a=check.a.method,
        method_b="+".join(methods[1:]),
        metric=f"{check.x},{check.y}",
    )
    seeds = _side_seeds(task, methods)
    part.seeds = tuple(sorted(seeds))
    try:
        a_pts = _points(task, check.a, check, seeds)
        b_pts = [p for side in check.b for p in _points(task, side, check, seeds)]
    except Missing as exc:
        part.reason = str(exc)
        return part
    part.width_a = a_pts[0].width
    part.flagged = _flags_of(flags, task, methods, seeds)
    evidence = _domination_text(check, a_pts, b_pts)
    beaten = [p for p in a_pts if any(dominates(q, p) for q in b_pts)]
    if part.flagged:
        part.reason = f"{_flagged_reason(part.flagged)}. {evidence}"
        return part
    ok = not beaten if check.require == "every_point" else len(beaten) < len(a_pts)
    part.verdict = HELD if ok else NOT_HELD
    part.reason = evidence
    return part


def _side_seeds(task: pd.DataFrame, methods: list[str]) -> set[int]:
    per = [set(task[task["method"] == m]["seed"].astype(int)) for m in methods]
    return set.intersection(*per) if per else set()


def _domination_text(check: Check, a_pts: list[Point], b_pts: list[Point]) -> str:
    def show(p: Point) -> str:
        lam = "" if math.isnan(p.lam) else f" λ={p.lam:g}"
        return f"{p.method}{lam} ({fmt_value(check.x, p.x)}, {fmt_value(check.y, p.y)})"

    lines = []
    for p in a_pts:
        by = [show(q) for q in b_pts if dominates(q, p)]
        lines.append(f"{show(p)}: " + (f"dominated by {', '.join(by)}" if by else "not dominated"))
    return "; ".join(lines) + f". Other points: {', '.join(show(q) for q in b_pts)}"


# ---- numbers in words -------------------------------------------------------------------------
_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (0.0, ""))


def _unit(metric: str) -> str:
    from splitmix.evaluate.rows import METRICS

    spec = METRICS.get(metric.split("+")[0])
    return spec.unit if spec is not None else ""


def fmt_value(metric: str, value: float, *, signed: bool = False, diff: bool = False) -> str:
    """A value in its metric's unit: fractions in percent, or in points for a difference
    (``diff`` or ``signed``); other units with an SI prefix (6.09M MAC/sample, 58.2 kB)."""
    if math.isnan(value):
        return "–"
    unit = _unit(metric)
    sign = "+" if signed else ""
    if unit == "fraction":
        return f"{100 * value:{sign}.2f} points" if signed or diff else f"{100 * value:.2f}%"
    if unit.startswith("s/") and abs(value) < 1:  # a latency: milliseconds read better
        return f"{1e3 * value:{sign}.3g} m{unit}"
    factor, prefix = next((f, p) for f, p in _SI if abs(value) >= f)
    number = f"{value / (factor or 1.0):{sign}.3g}"
    if unit == "count":
        return f"{number}{prefix}"
    return f"{number} {prefix}{unit}" if unit == "B" else f"{number}{prefix} {unit}".rstrip()
