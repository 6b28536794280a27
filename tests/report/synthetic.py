"""Plausible evaluation rows and run records for report tests (no training involved).

``write_runs(root, specs)`` writes ``results/{dataset}/{split}/{method}/seed{seed}/eval.csv`` and
``run.json`` beside it, in the layout and schema the evaluation produces, and returns every row it
wrote so a test can recompute any number by hand. Values are random but deterministic in the
(run, seed): accuracy grows with width and differs per method, so the figures look like results.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

WIDTHS = (0.125, 0.25, 0.5, 1.0)
DOMAINS = {"digits": ("mnist", "svhn", "usps", "synth", "mnistm"), "cifar10": ("cifar10",)}
SPLITS = {"digits": "feature", "cifar10": "iid"}
CLIENTS_PER_DOMAIN = {"digits": 2, "cifar10": 4}
BASE_ACC = {"digits": 0.82, "cifar10": 0.66}
METHOD_GAIN = {"fedavg": 0.0, "heterofl": -0.03, "sheterofl": -0.01, "splitmix": 0.02}
BASE_MACS = {"digits": 6.0e6, "cifar10": 5.6e8}  # full-width MACs per sample
BASE_PARAMS = {"digits": 8.8e5, "cifar10": 1.1e7}
ROUNDS = 6
LATENCY_PER_MAC = 2e-10  # seconds per sample per MAC at the larger batch
MACHINE = "Test CPU, 2 cores"
COLUMNS = (
    "dataset",
    "split",
    "method",
    "algorithm",
    "seed",
    "round",
    "width",
    "lam",
    "client",
    "domain",
    "metric",
    "value",
    "unit",
)


@dataclass
class Spec:
    """One synthetic run."""

    dataset: str
    method: str
    algorithm: str
    seed: int
    widths: tuple[float, ...]
    budgets: str = "8-4-2-1"
    participation: int = -1
    bn: str = "batch"
    method_params: dict[str, Any] = field(default_factory=dict)
    train_lam: float = 0.0
    test_lams: tuple[float, ...] | None = None  # dual BN: rows per test lambda
    robust: bool = False  # robust_acc rows (PGD evaluation)
    pgd_steps: int = 7  # the evaluation attack's pgd_* rows, written with robust rows
    record: bool = True  # write run.json
    # exact clean client-mean test accuracy per width (no noise; clients spread evenly around it)
    acc: dict[float, float] | None = None
    curve: str = "saturating"  # validation curve: saturating (still rising) | plateau | rising
    flags: bool = False  # add the evaluation's flag rows, decided by its own rule from these rows
    cost_scale: float = 1.0  # MACs/FLOPs relative to a dense model of the width
    bytes_scale: float = 1.0  # bytes per round relative to a dense model of the budget
    # run.json's algorithm.one_run_per_width; None = the registered method's (False if unknown)
    one_run_per_width: bool | None = None
    legacy_record: bool = False  # a record of before one_run_per_width and resolved params
    latency_scale: float = 1.0  # latency relative to LATENCY_PER_MAC x MACs
    storage_scale: float = 1.0  # serve_all_bytes relative to the widest model's state bytes
    machine: str | None = MACHINE  # eval.json's machine; None = write no eval.json

    @property
    def split(self) -> str:
        return SPLITS[self.dataset]

    @property
    def per_width(self) -> bool:
        """Whether each width of this method is a run of its own (as training records it)."""
        if self.one_run_per_width is not None:
            return self.one_run_per_width
        cls = _registered(self.algorithm)
        return bool(cls.one_run_per_width) if cls is not None else False


def _registered(algorithm: str) -> type | None:
    """The registered method class, or None for a name made up by a test."""
    from splitmix.errors import ConfigError
    from splitmix.methods import algorithm_class

    try:
        return algorithm_class(algorithm)
    except ConfigError:
        return None


def _rng(spec: Spec, salt: str) -> np.random.Generator:
    key = f"{spec.dataset}/{spec.method}/{spec.seed}/{salt}".encode()
    return np.random.default_rng(zlib.crc32(key))


def client_names(dataset: str) -> list[tuple[str, str]]:
    """(client, domain) pairs, domain-major like the real federation."""
    n = CLIENTS_PER_DOMAIN[dataset]
    return [(f"{d}-{i}", d) for d in DOMAINS[dataset] for i in range(n)]


def budgets_of(spec: Spec) -> list[float]:
    """Budget per client by index (ascending contiguous groups, docs/paper.md#budgets)."""
    if spec.budgets.startswith("ln"):
        ws = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    else:
        ws = sorted(1.0 / float(t) if "d" not in t else _pdq(t) for t in spec.budgets.split("-"))
    k = len(client_names(spec.dataset))
    return [ws[(len(ws) * i) // k] for i in range(k)]


def _pdq(token: str) -> float:
    p, q = token.split("d")
    return int(q) / int(p)


def _acc(spec: Spec, width: float) -> float:
    gain = METHOD_GAIN.get(spec.algorithm, 0.0)
    size = 0.06 * np.log2(width / 0.125) / 3.0
    budget = {"8-4-2-1": 0.0, "8-1-1-1": 0.02, "ln0.5_0.4": -0.02}.get(spec.budgets, 0.0)
    part = 0.0 if spec.participation < 0 else -0.04 / spec.participation
    resc = 0.01 * bool(spec.method_params.get("rescale_init", True))
    return BASE_ACC[spec.dataset] + gain + size + budget + part + resc - 0.05 * spec.train_lam


def _row(spec: Spec, **kw: Any) -> dict[str, Any]:
    base = {
        "dataset": spec.dataset,
        "split": spec.split,
        "method": spec.method,
        "algorithm": spec.algorithm,
        "seed": spec.seed,
        "round": -1,
        "width": np.nan,
        "lam": np.nan,
        "client": "",
        "domain": "",
    }
    return {**base, **kw}


def _client_rows(
    spec: Spec, metric: str, values: list[float], unit: str, **common: Any
) -> list[dict[str, Any]]:
    """Per-client rows, then per-domain means (client ``mean``) and the mean over all clients."""
    clients = client_names(spec.dataset)
    rows = [
        _row(spec, client=name, domain=dom, metric=metric, value=float(v), unit=unit, **common)
        for (name, dom), v in zip(clients, values, strict=True)
    ]
    for d in DOMAINS[spec.dataset]:
        vs = [v for (_, dom), v in zip(clients, values, strict=True) if dom == d]
        rows.append(_row(spec, client="mean", domain=d, metric=metric, value=float(np.mean(vs)),
                         unit=unit, **common))  # fmt: skip
    rows.append(_row(spec, client="mean", domain="all", metric=metric,
                     value=float(np.mean(values)), unit=unit, **common))  # fmt: skip
    return rows


def rows_for(spec: Spec) -> pd.DataFrame:
    """Every evaluation row of one synthetic run (schema of ``splitmix.evaluate.rows``)."""
    rng = _rng(spec, "values")
    n = len(client_names(spec.dataset))
    val_lam = 0.0 if spec.test_lams is not None else np.nan  # dual BN validates SA at lambda 0
    rows: list[dict[str, Any]] = []
    for width in spec.widths:
        final = _acc(spec, width) + rng.normal(0, 0.01)
        final = spec.acc[width] if spec.acc is not None else final
        for r in range(ROUNDS):
            curve = _curve(spec.curve, final, r) + rng.normal(0, 0.005)
            rows.append(
                _row(spec, round=r, width=width, lam=val_lam, client="mean", domain="all",
                     metric="val_acc", value=curve, unit="fraction")
            )  # fmt: skip
        lams = spec.test_lams if spec.test_lams is not None else (np.nan,)
        for lam in lams:
            mix = 0.0 if np.isnan(lam) else lam
            metrics = {"acc": final - 0.08 * mix}
            if spec.robust:
                metrics["robust_acc"] = 0.15 + 0.35 * (mix if spec.test_lams else spec.train_lam)
            for metric, center in metrics.items():
                vals = np.clip(center + rng.normal(0, 0.04, size=n), 0, 1)
                if spec.acc is not None:  # exact: the mean over clients is the center
                    vals = center + 0.01 * np.resize([1.0, -1.0], n)
                rows += _client_rows(spec, metric, list(vals), "fraction", width=width, lam=lam)
        macs = BASE_MACS[spec.dataset] * width**2 * spec.cost_scale
        params = BASE_PARAMS[spec.dataset] * width**2
        latency = LATENCY_PER_MAC * macs * spec.latency_scale
        for metric, value, unit in (
            ("macs", macs, "MAC/sample"),
            ("flops", 2 * macs, "FLOP/sample"),
            ("params", params, "count"),
            ("state_numel", params * 1.01, "count"),
            ("model_bytes", 4 * params * 1.01, "B"),
            ("export_bytes", 4 * params * 1.01 + 5e3, "B"),
            ("latency_b1", latency * 3, "s/sample"),
            ("latency_bn", latency, "s/sample"),
            ("latency_b1_plain", latency * 4, "s/sample"),
            ("latency_bn_plain", latency * 1.5, "s/sample"),
        ):
            rows.append(_row(spec, width=width, metric=metric, value=value, unit=unit))
    stored = 4 * BASE_PARAMS[spec.dataset] * max(spec.widths) ** 2 * 1.01 * spec.storage_scale
    for metric, value, unit in (
        ("serve_all_bytes", stored, "B"),
        ("latency_batch", 32, "count"),
        ("latency_threads", 1, "count"),
    ):
        rows.append(_row(spec, metric=metric, value=value, unit=unit))
    trained = [max(spec.widths) if spec.per_width else b for b in budgets_of(spec)]
    nbytes = [4 * BASE_PARAMS[spec.dataset] * w**2 * spec.bytes_scale for w in trained]
    rows += _client_rows(spec, "bytes_down_per_round", nbytes, "B")
    rows += _client_rows(spec, "bytes_up_per_round", nbytes, "B")
    secs = [0.5 + w * rng.uniform(1, 2) for w in trained]
    rows += _client_rows(spec, "client_seconds_per_round", secs, "s")
    for r in range(ROUNDS):
        rows.append(_row(spec, round=r, metric="round_seconds", value=sum(secs), unit="s"))
    if spec.robust:
        step = (10 / 255) / spec.pgd_steps
        for metric, value, unit in (
            ("pgd_eps", 8 / 255, "intensity"),
            ("pgd_steps", spec.pgd_steps, "count"),
            ("pgd_step_size", step, "intensity"),
        ):
            rows.append(_row(spec, metric=metric, value=value, unit=unit))
    if spec.flags:
        from splitmix.evaluate.flags import FlagRule, flag_rows
        from splitmix.evaluate.rows import RunKey

        key = RunKey(spec.dataset, spec.split, spec.method, spec.algorithm, spec.seed)
        rows += flag_rows(key, rows, num_classes=10, rule=FlagRule())
    return pd.DataFrame(rows, columns=COLUMNS)


def _curve(kind: str, final: float, r: int) -> float:
    """Validation accuracy after round ``r`` (of ROUNDS) of a run that ends at ``final``."""
    if kind == "plateau":
        return final  # reached in the first round: nothing left to gain
    if kind == "rising":
        return final * (r + 1) / ROUNDS  # a straight climb, cut off at its top
    return final * (1 - np.exp(-(r + 1) / 2.0))


def record_for(spec: Spec) -> dict[str, Any]:
    """A ``run.json`` shaped like the engine's run record (only the parts the report reads): the
    method's params resolved over its declared defaults and its one_run_per_width, unless
    ``legacy_record`` (then only the params set, and no one_run_per_width)."""
    budgets = budgets_of(spec)
    counts: dict[str, int] = {}
    for b in budgets:
        counts[f"{b:g}"] = counts.get(f"{b:g}", 0) + 1
    params = dict(spec.method_params)
    algo: dict[str, Any] = {}
    if spec.per_width:
        params.setdefault("width", spec.widths[0])
        algo["budget_violating"] = bool(spec.widths[0] > min(budgets))
    cls = _registered(spec.algorithm)
    if not spec.legacy_record:
        params = {**(cls.params if cls is not None else {}), **params}
        algo["one_run_per_width"] = spec.per_width
    return {
        "config": {
            "dataset": spec.dataset,
            "split": spec.split,
            "method": spec.method,
            "algorithm": spec.algorithm,
            "seed": spec.seed,
            "budgets": spec.budgets,
            "participation": spec.participation,
            "bn": spec.bn,
            "method_params": params,
            "adv": {"lam": spec.train_lam},
        },
        "federation": {"num_clients": len(budgets), "budgets": counts},
        "algorithm": algo,
    }


def run_dir(root: Path, spec: Spec) -> Path:
    return Path(root) / "results" / spec.dataset / spec.split / spec.method / f"seed{spec.seed}"


def write_runs(root: Path, specs: list[Spec]) -> pd.DataFrame:
    """Write eval.csv (+ run.json) for every spec; return all rows written."""
    frames = []
    for spec in specs:
        out = run_dir(root, spec)
        out.mkdir(parents=True, exist_ok=True)
        df = rows_for(spec)
        df.to_csv(out / "eval.csv", index=False)
        if spec.record:
            (out / "run.json").write_text(json.dumps(record_for(spec), indent=2))
        if spec.machine is not None:
            record = {"machine": spec.machine, "device": "cpu", "threads": 1, "latency_batch": 32}
            (out / "eval.json").write_text(json.dumps(record))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def main_specs(
    datasets: tuple[str, ...] = ("digits", "cifar10"), seeds=(1, 2), robust: bool = False
) -> list[Spec]:
    """The Table 1 grid: FedAvg per width, SHeteroFL, Split-Mix (``robust``: with PGD rows, as
    the evaluation writes by default)."""
    specs = []
    for ds in datasets:
        for seed in seeds:
            for w in WIDTHS:
                specs.append(Spec(ds, f"fedavg_x{w:g}", "fedavg", seed, (w,), robust=robust))
            specs.append(Spec(ds, "sheterofl", "sheterofl", seed, WIDTHS, robust=robust))
            specs.append(Spec(ds, "splitmix", "splitmix", seed, WIDTHS, robust=robust))
    return specs


def at_specs(dataset: str = "cifar10", seeds=(1,)) -> list[Spec]:
    """FedAvg AT (one run per training lambda) and Split-Mix with dual BN (curve over test
    lambda)."""
    specs = []
    for seed in seeds:
        for lam in (0.3, 0.5, 1.0):
            for w in (0.125, 1.0):
                specs.append(
                    Spec(dataset, f"fedavg_at{lam:g}_x{w:g}", "fedavg", seed, (w,), train_lam=lam,
                         bn="tracked", robust=True)
                )  # fmt: skip
        specs.append(
            Spec(dataset, "splitmix_dbn", "splitmix", seed, WIDTHS, train_lam=0.5, bn="tracked",
                 test_lams=(0.0, 0.2, 0.5, 0.8, 1.0), robust=True)
        )  # fmt: skip
    return specs


def variant_specs(dataset: str = "digits", seeds=(1, 2)) -> list[Spec]:
    """Budget distributions, participation rates and the BN/rescale ablation (Split-Mix)."""
    specs = []
    for seed in seeds:
        for b in ("8-1-1-1", "ln0.5_0.4"):
            ws = WIDTHS if not b.startswith("ln") else tuple((i + 1) / 8 for i in range(8))
            for algo in ("splitmix", "sheterofl"):
                specs.append(Spec(dataset, f"{algo}_b{b}", algo, seed, ws, budgets=b))
        for pr in (2, 5):
            specs.append(
                Spec(dataset, f"splitmix_pr{pr}", "splitmix", seed, WIDTHS, participation=pr)
            )
        for bn in ("batch", "tracked"):
            for ri in (True, False):
                if bn == "batch" and ri:
                    continue  # = the main splitmix run
                specs.append(
                    Spec(dataset, f"splitmix_{bn}_ri{int(ri)}", "splitmix", seed, WIDTHS, bn=bn,
                         method_params={"rescale_init": ri, "rescale_layer": True})
                )  # fmt: skip
    return specs


def markdown_cells(md: str, task: str | None = None) -> dict[tuple[str, str], dict[str, str]]:
    """Table 1's Markdown as (width label, method) -> {header: cell} for the main table of
    ``task`` ("dataset / split"; the first task when None)."""
    sections = md.split("\n## ")[1:]
    section = next(s for s in sections if task is None or s.startswith(task))
    lines = [x for x in section.splitlines() if x.startswith("| Width |")]
    start = section.splitlines().index(lines[0])
    body = section.splitlines()[start:]
    header = [c.strip() for c in body[0].strip("|").split("|")]
    out = {}
    for line in body[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        out[(row["Width"], row["Method"])] = row
    return out
