"""Figures from evaluation rows (docs/paper.md#figures): one builder per kind of figure.

Every builder takes the loaded rows (with run config columns, see ``load.py``) and returns, per
task (dataset x split), either a drawn figure with its caption or the reason it was skipped, so
the command can say exactly what it made and why anything is missing. Figures are plain
``matplotlib.figure.Figure`` objects (Agg canvas, no pyplot state), drawn inside ``STYLE``.

Accuracies are shown in percent; every axis names its unit. Mean +- std is over seeds of the
unweighted mean over clients (the paper's "avg test acc").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from splitmix.report.load import (
    MACHINE,
    METHOD_ORDER,
    PER_WIDTH,
    RUN_INFO,
    RUN_KEYS,
    VARIANT_COLUMNS,
    client_mean,
    model_metric,
    per_client,
    reference_filter,
)
from splitmix.report.tables import column_name, column_order, width_label

STYLE: dict[str, Any] = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("notebook", font_scale=0.85),
    "axes.titleweight": "bold",
    "figure.titlesize": 13,
    "legend.frameon": False,
    "savefig.facecolor": "white",
}
PANEL = (3.8, 3.4)  # inches per subplot
ACC_LABEL = "test accuracy [%]"


@dataclass
class Made:
    name: str  # file stem, e.g. "convergence_digits_feature"
    fig: Figure
    caption: str


@dataclass
class Skipped:
    name: str  # figure kind (and task where known)
    reason: str


Result = Made | Skipped
Builder = Callable[[pd.DataFrame], list[Result]]


# ---- helpers ------------------------------------------------------------------------------------
def _slug(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", str(p)) for p in parts)


def _panels(n: int, ncols: int = 4, sharey: bool = True, size=PANEL) -> tuple[Figure, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=sharey, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def with_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``column``: the method's display name (one-run-per-width runs share one)."""
    df = df.copy()
    df["column"] = [column_name(m, p) for m, p in zip(df["method"], df[PER_WIDTH], strict=True)]
    return df


def method_colors(rows: pd.DataFrame) -> dict[str, Any]:
    """One stable color per algorithm name and method column across every figure of a report:
    the algorithms first (one-run-per-width ones, then by first row), so a method entry named
    like its algorithm (the paper's four) keeps its color whatever variants are in the rows."""
    runs = rows[["method", *RUN_INFO]].drop_duplicates()
    algs = runs.assign(column=runs["algorithm"])
    algs = algs.assign(**{METHOD_ORDER: algs.groupby("algorithm")[METHOD_ORDER].transform("min")})
    names = column_order(algs)
    names += [c for c in column_order(with_columns(runs)) if c not in names]
    palette = sns.color_palette("tab10") + sns.color_palette("tab20b")
    return {c: palette[i % len(palette)] for i, c in enumerate(names)}


def width_colors(widths: list[float]) -> dict[float, Any]:
    cmap = mpl.colormaps["viridis"]
    ws = sorted(set(widths))
    return {w: cmap(0.85 * i / max(1, len(ws) - 1)) for i, w in enumerate(ws)}


def clean_acc(rows: pd.DataFrame) -> pd.DataFrame:
    """Client-mean clean test accuracy per run x width of the non-AT runs (lambda empty or 0)."""
    acc = client_mean(rows[~rows["is_at"]], "acc")
    acc = acc[acc["lam"].isna() | (acc["lam"] == 0.0)]
    return with_columns(acc)


def seed_stats(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and std (ddof=1) over runs of ``value`` per ``keys`` (std NaN with one run)."""
    return df.groupby(keys, dropna=False)["value"].agg(["mean", "std", "count"]).reset_index()


def _seeds_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"{lo} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo}-{hi} seeds"


def _legend(fig: Figure, handles: list[Any], title: str | None = None) -> None:
    """Legend below the axes, outside them, so it never hides data or the title."""
    longest = max((len(h.get_label()) for h in handles), default=0)
    per_row = 6 if longest <= 8 else 4 if longest <= 20 else 2 if longest <= 45 else 1
    fig.legend(
        handles=handles, title=title, loc="outside lower center", ncols=min(len(handles), per_row)
    )


def _line(color: Any, label: str, **kw: Any) -> Line2D:
    return Line2D([], [], color=color, label=label, **kw)


def _violations(rows: pd.DataFrame) -> pd.Series:
    """Budget violation per run x width (one-run-per-width wider than the smallest budget)."""
    return rows.groupby([*RUN_KEYS, *RUN_INFO, "width"])["violates_budget"].any()


def _tasks(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(df["dataset"], df["split"], strict=True)))


def _task_rows(df: pd.DataFrame, dataset: str, split: str) -> pd.DataFrame:
    return df[(df["dataset"] == dataset) & (df["split"] == split)]


def _errorband(ax: Any, x: Any, mean: Any, std: Any, color: Any) -> None:
    std = np.nan_to_num(np.asarray(std, dtype=float))
    if std.any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


# ---- point labels that do not overlap -----------------------------------------------------------
@dataclass
class PointLabel:
    x: float  # data coordinates of the labelled point
    y: float
    text: str
    color: Any = "0.25"


LABEL_GAPS = (4.0, 9.0, 16.0, 26.0)  # pixels between a point and its label, nearest first
MARKER_HALF = 5.0  # pixels around a marker that a label must not cover


def _candidates(w: float, h: float) -> list[tuple[float, float]]:
    """Lower-left corners of a w x h label relative to its point, nearest and most readable first
    (right, then left, above, below, then the diagonals)."""
    out = []
    for r in LABEL_GAPS:
        out += [(r, -h / 2), (-r - w, -h / 2), (-w / 2, r), (-w / 2, -r - h),
                (r, r / 2), (r, -r / 2 - h), (-r - w, r / 2), (-r - w, -r / 2 - h)]  # fmt: skip
    return out


def _segment_samples(ax: Any, step: float = 6.0) -> np.ndarray:
    """Pixel positions along every plotted line and error bar, so labels avoid crossing them."""
    paths = [np.column_stack(line.get_data()).astype(float) for line in ax.get_lines()]
    for coll in ax.collections:
        if isinstance(coll, LineCollection):  # error bars
            paths += [np.asarray(seg, dtype=float) for seg in coll.get_segments()]
    pts = []
    for path in paths:
        xy = ax.transData.transform(path) if len(path) else path.reshape(0, 2)
        xy = xy[np.isfinite(xy).all(axis=1)]
        for a, b in zip(xy[:-1], xy[1:], strict=True):
            n = max(2, int(np.hypot(*(b - a)) / step))
            pts.append(a + np.linspace(0, 1, n)[:, None] * (b - a))
    return np.vstack(pts) if pts else np.empty((0, 2))


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(0.0, w) * max(0.0, h)


def place_labels(fig: Figure, ax: Any, labels: list[PointLabel], fontsize: float = 7) -> list[Any]:
    """Annotate points so that no two labels overlap and no label covers a marker or a curve.

    Greedy: each label takes the nearest candidate position (around its point) of least cost;
    labels of the same text at practically the same point (methods sharing a cost) are drawn once.
    The figure is laid out first so pixel distances are those of the saved figure; the labels are
    kept out of the layout so placing them cannot move the axes they were measured against.
    """
    if not labels:
        return []
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform([(lb.x, lb.y) for lb in labels])
    curves = _segment_samples(ax)
    markers = [Bbox.from_bounds(px - MARKER_HALF, py - MARKER_HALF, 2 * MARKER_HALF,
                                2 * MARKER_HALF) for px, py in points]  # fmt: skip
    placed: list[Bbox] = []
    kept: list[tuple[str, np.ndarray]] = []
    artists = []
    for lb, (px, py) in zip(labels, points, strict=True):
        here = np.array([px, py])
        if any(t == lb.text and np.hypot(*(p - here)) < 2 * MARKER_HALF for t, p in kept):
            continue
        kept.append((lb.text, here))
        probe = ax.text(0, 0, lb.text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        best, best_cost = None, math.inf
        for rank, (dx, dy) in enumerate(_candidates(ext.width, ext.height)):
            box = Bbox.from_bounds(px + dx, py + dy, ext.width, ext.height)
            inside = _overlap(box, frame) / (ext.width * ext.height)
            cost = 1e4 * sum(_overlap(box, p) for p in placed)
            cost += 1e3 * sum(_overlap(box, m) for m in markers)
            if len(curves):
                hit = ((curves[:, 0] > box.x0) & (curves[:, 0] < box.x1)
                       & (curves[:, 1] > box.y0) & (curves[:, 1] < box.y1))  # fmt: skip
                cost += 50.0 * hit.sum()
            cost += 1e6 * (1.0 - inside) + rank  # nearer candidates win ties
            if cost < best_cost:
                best, best_cost = (dx, dy, box), cost
        dx, dy, box = best
        placed.append(box)
        to_pt = 72.0 / fig.dpi  # points survive saving at another dpi, pixels would not
        artist = ax.annotate(lb.text, (lb.x, lb.y), xytext=(dx * to_pt, dy * to_pt),
                             textcoords="offset points", ha="left", va="bottom",
                             fontsize=fontsize, color=lb.color, annotation_clip=False)  # fmt: skip
        artist.set_in_layout(False)
        artists.append(artist)
    return artists


# ---- convergence --------------------------------------------------------------------------------
def convergence(rows: pd.DataFrame) -> list[Result]:
    """Validation accuracy vs round, one panel per method, one curve per width (Figs 1, 4, 13)."""
    val = client_mean(rows[~rows["is_at"]], "val_acc", test=False)
    val = with_columns(val[val["lam"].isna() | (val["lam"] == 0.0)])
    if val.empty:
        return [Skipped("convergence", "no per-round val_acc rows (round >= 0)")]
    out: list[Result] = []
    for dataset, split in _tasks(val):
        g = _task_rows(val, dataset, split)
        cols = column_order(g)
        wcol = width_colors(list(g["width"]))
        fig, axes = _panels(len(cols))
        stats = seed_stats(g, ["column", "width", "round"])
        for ax, col in zip(axes, cols, strict=True):
            for w, s in stats[stats["column"] == col].groupby("width"):
                s = s.sort_values("round")
                ax.plot(s["round"], 100 * s["mean"], color=wcol[w], lw=1.6)
                _errorband(ax, s["round"], 100 * s["mean"], 100 * s["std"], wcol[w])
            ax.set_title(col)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
        axes[0].set_ylabel("validation accuracy [%]")
        _legend(fig, [_line(wcol[w], width_label(w)) for w in sorted(wcol)], "width")
        fig.suptitle(f"Convergence: {dataset} / {split}")
        out.append(
            Made(
                _slug("convergence", dataset, split),
                fig,
                f"Convergence on {dataset}/{split}: validation accuracy [%] (mean over clients) "
                f"vs round, one curve per width; line = mean, band = ±1 std over "
                f"{_seeds_text(stats['count'])}.",
            )
        )
    return out


# ---- per-domain accuracy ------------------------------------------------------------------------
def per_domain(rows: pd.DataFrame) -> list[Result]:
    """Bar plot of test accuracy per domain x method, one panel per width (Fig 6)."""
    pc = per_client(rows[~rows["is_at"]], "acc")
    pc = with_columns(pc[pc["lam"].isna() | (pc["lam"] == 0.0)])
    pc = pc[~pc["domain"].isin(("", "all"))]
    if pc.empty:
        return [Skipped("per_domain", "no per-client test acc rows with a domain")]
    out: list[Result] = []
    colors = method_colors(rows)
    for dataset, split in _tasks(pc):
        g = _task_rows(pc, dataset, split)
        # the federation's (domain-major) order, as the rows list the clients
        raw = _task_rows(rows, dataset, split)
        raw = raw[(raw["metric"] == "acc") & ~raw["client"].isin(("", "mean"))]
        domains = [d for d in pd.unique(raw["domain"]) if d in set(g["domain"])]
        name = _slug("per_domain", dataset, split)
        if len(domains) < 2:
            out.append(Skipped(name, f"{dataset}/{split} has one domain ({domains[0]})"))
            continue
        # mean over a domain's clients per run, then mean/std over seeds
        per_run = g.groupby([*RUN_KEYS, "column", "width", "domain"])["value"].mean()
        stats = seed_stats(per_run.reset_index(), ["column", "width", "domain"])
        viol = _violations(rows).rename("viol").reset_index()
        viol = with_columns(viol).groupby(["column", "width"])["viol"].any()
        widths = sorted(stats["width"].unique())
        cols = column_order(g)
        fig, axes = _panels(len(widths), ncols=2, size=(1.0 + 0.9 * len(domains), 3.2))
        for ax, w in zip(axes, widths, strict=True):
            s = stats[stats["width"] == w]
            present = [c for c in cols if c in set(s["column"])]
            step = 0.8 / max(1, len(present))
            for i, col in enumerate(present):
                sc = s[s["column"] == col].set_index("domain").reindex(domains)
                x = np.arange(len(domains)) - 0.4 + step * (i + 0.5)
                hatch = "//" if viol.get((col, w), False) else None
                ax.bar(x, 100 * sc["mean"], width=step, color=colors[col], hatch=hatch,
                       edgecolor="white", linewidth=0.5)  # fmt: skip
                ax.errorbar(x, 100 * sc["mean"], yerr=100 * sc["std"].fillna(0), fmt="none",
                            ecolor="0.25", elinewidth=0.8, capsize=2)  # fmt: skip
            ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
            ax.grid(axis="x", visible=False)
            ax.set_title(f"width {width_label(w)}")
            ax.set_xlabel("domain")
            ax.set_ylim(0, 100)
        for ax in axes[:: min(2, len(axes))]:
            ax.set_ylabel(ACC_LABEL)
        handles = [_line(colors[c], c, lw=6) for c in cols]
        if viol.any():
            handles.append(Patch(facecolor="0.6", hatch="//", edgecolor="white",
                                 label="violates budget"))  # fmt: skip
        _legend(fig, handles, "method")
        fig.suptitle(f"Per-domain test accuracy: {dataset} / {split}")
        out.append(
            Made(
                name,
                fig,
                f"Test accuracy [%] per domain on {dataset}/{split} (mean over the domain's "
                f"clients), one panel per width; bars = mean, whiskers = ±1 std over "
                f"{_seeds_text(stats['count'])}; hatched = FedAvg wider than the smallest client "
                "budget.",
            )
        )
    return out


# ---- client statistics ---------------------------------------------------------------------------
def _client_width(acc: pd.DataFrame, task_rows: pd.DataFrame) -> dict[str, float]:
    """Width shown per method: a one-run-per-width family's widest budget-respecting width, else
    the widest."""
    out: dict[str, float] = {}
    viol = task_rows.groupby(["method", "width"])["violates_budget"].any()
    for col, g in acc.groupby("column"):
        widths = sorted(g["width"].unique())
        if g[PER_WIDTH].all():
            ok = [w for w in widths if not any(viol.get((m, w), False) for m in set(g["method"]))]
            out[col] = max(ok) if ok else min(widths)
        else:
            out[col] = max(widths)
    return out


CLIENT_PANELS = (
    ("acc", ACC_LABEL, False),
    ("bytes_up_per_round", "uploaded per round [B]", True),
    ("bytes_down_per_round", "downloaded per round [B]", True),
    ("client_seconds_per_round", "local training time per round [s]", False),
    ("macs", "MACs per sample [MAC]", True),
)


def client_stats(rows: pd.DataFrame) -> list[Result]:
    """Boxplots over clients per method: test acc, bytes per round, local time (Fig 5)."""
    base = rows[~rows["is_at"]]
    acc = per_client(base, "acc")
    acc = with_columns(acc[acc["lam"].isna() | (acc["lam"] == 0.0)])
    if acc.empty:
        return [Skipped("client_stats", "no per-client test acc rows")]
    out: list[Result] = []
    colors = method_colors(rows)
    for dataset, split in _tasks(acc):
        task = _task_rows(base, dataset, split)
        a = _task_rows(acc, dataset, split)
        shown = _client_width(a, task)
        # the runs shown per column: the acc width; run-level metrics come from those runs
        runs = a[[w == shown[c] for c, w in zip(a["column"], a["width"], strict=True)]]
        run_ids = runs[list(RUN_KEYS)].drop_duplicates()
        panels = []
        for metric, label, log in CLIENT_PANELS:
            vals = with_columns(per_client(task, metric).merge(run_ids, on=list(RUN_KEYS)))
            if metric in ("acc", "macs"):
                pairs = zip(vals["column"], vals["width"], strict=True)
                vals = vals[[shown.get(c) == w for c, w in pairs]]
            if metric == "acc":
                vals = vals[vals["lam"].isna() | (vals["lam"] == 0.0)]
            if not vals.empty:
                panels.append((vals, label, log, metric))
        cols = [c for c in column_order(a) if c in shown]
        fig, axes = _panels(len(panels), ncols=len(panels), sharey=False, size=(3.4, 3.4))
        for ax, (vals, label, log, metric) in zip(axes, panels, strict=True):
            # one value per client: average its seeds
            v = vals.groupby(["column", "client"])["value"].mean().reset_index()
            if metric == "acc":
                v["value"] = 100 * v["value"]
            present = [c for c in cols if c in set(v["column"])]
            box = ax.boxplot(
                [v.loc[v["column"] == c, "value"].to_numpy() for c in present],
                positions=range(len(present)), widths=0.6, patch_artist=True,
                medianprops={"color": "0.15"}, flierprops={"markersize": 3},
            )  # fmt: skip
            for patch, c in zip(box["boxes"], present, strict=True):
                patch.set_facecolor(colors[c])
            ax.set_xticks(range(len(present)), [f"{c}\n{width_label(shown[c])}" for c in present])
            ax.grid(axis="x", visible=False)
            ax.set_xlabel("method, width")
            ax.set_ylabel(label)
            if log:
                ax.set_yscale("log")
            ax.set_title(label.split(" [")[0])
        fig.suptitle(f"Client statistics: {dataset} / {split}")
        names = "; ".join(p[1] for p in panels)
        out.append(
            Made(
                _slug("client_stats", dataset, split),
                fig,
                f"Distribution over clients on {dataset}/{split} ({names}), per method at the "
                "width shown under its name (FedAvg: widest width within every client's budget; "
                "size-adaptive methods: full width); each client's value is averaged over seeds.",
            )
        )
    return out


# ---- FLOPs / accuracy and latency / accuracy trade-offs ------------------------------------------
def flops_accuracy(rows: pd.DataFrame) -> list[Result]:
    """Accuracy vs MACs per sample (log x), one line per method over its widths."""
    clean = rows[~rows["is_at"]]
    if model_metric(clean, "macs").empty:
        return _cost_accuracy(rows, "flops_accuracy", "flops", "FLOPs per sample [FLOP]", "FLOPs")
    return _cost_accuracy(rows, "flops_accuracy", "macs", "MACs per sample [MAC]", "MACs")


def latency_accuracy(rows: pd.DataFrame) -> list[Result]:
    """Accuracy vs measured latency at batch 1 (log x): the FLOPs figure's measured twin."""
    return _cost_accuracy(
        rows, "latency_accuracy", "latency_b1", "latency at batch 1 [ms per image]", "latency",
        scale=1e3,
    )  # fmt: skip


def _cost_accuracy(
    rows: pd.DataFrame, name: str, metric: str, label: str, short: str, scale: float = 1.0
) -> list[Result]:
    acc = clean_acc(rows)
    clean = rows[~rows["is_at"]]
    cost = model_metric(clean, metric)
    if acc.empty or cost.empty:
        return [Skipped(name, f"needs test acc and {metric} rows of non-AT runs")]
    cost["value"] *= scale
    keys = [*RUN_KEYS, *RUN_INFO, "width"]
    both = acc.merge(cost.rename(columns={"value": "cost"}), on=keys)
    viol = _violations(clean).rename("viol").reset_index()
    both = both.merge(viol, on=keys, how="left")
    out: list[Result] = []
    colors = method_colors(rows)
    for dataset, split in _tasks(both):
        g = _task_rows(both, dataset, split)
        stats = g.groupby(["column", "width"]).agg(
            mean=("value", "mean"), std=("value", "std"), n=("value", "count"),
            cost=("cost", "mean"), viol=("viol", "any"))  # fmt: skip
        stats = stats.reset_index()
        fig, axes = _panels(1, size=(5.6, 3.8))
        ax = axes[0]
        shared = _shared_costs(stats)
        labels = []
        for col in column_order(g):
            s = stats[stats["column"] == col].sort_values("cost")
            ax.plot(s["cost"], 100 * s["mean"], color=colors[col], lw=1.4, label=col)
            ax.errorbar(s["cost"], 100 * s["mean"], yerr=100 * s["std"].fillna(0), fmt="none",
                        ecolor=colors[col], elinewidth=0.9, capsize=2)  # fmt: skip
            labels += [PointLabel(p["cost"], 100 * p["mean"], width_label(p["width"]), "0.3")
                       for _, p in s.iterrows() if p["width"] not in shared]  # fmt: skip
            for filled, part in ((True, s[~s["viol"]]), (False, s[s["viol"]])):
                ax.scatter(part["cost"], 100 * part["mean"], s=36, zorder=3,
                           facecolors=colors[col] if filled else "white",
                           edgecolors=colors[col], linewidths=1.3)  # fmt: skip
        ax.set_xscale("log")
        ax.margins(x=0.08)  # room for the width labels of the end points
        if shared:
            top = ax.secondary_xaxis("top")
            top.set_xticks(list(shared.values()), [width_label(w) for w in shared])
            top.minorticks_off()
            top.set_xlabel("width (same cost for every method)", fontsize=8)
        ax.set_xlabel(f"{label} (log scale)")
        ax.set_ylabel(ACC_LABEL)
        handles = [_line(colors[c], c, marker="o") for c in column_order(g)]
        if stats["viol"].any():
            handles.append(_line("0.3", "violates budget", marker="o", ls="none",
                                 markerfacecolor="white"))  # fmt: skip
        _legend(fig, handles, "method")
        ax.set_title(f"Accuracy vs {short}: {dataset} / {split}")
        place_labels(fig, ax, labels)
        out.append(
            Made(
                _slug(name, dataset, split),
                fig,
                f"Test accuracy [%] vs {label} (log scale) on {dataset}/{split}"
                f"{_measured_on(clean, dataset, split, metric)}; one point per width, mean ± std "
                f"over {_seeds_text(stats['n'])}; hollow markers = FedAvg widths that violate the "
                "smallest client budget.",
            )
        )
    return out


def _measured_on(rows: pd.DataFrame, dataset: str, split: str, metric: str) -> str:
    """ ", measured on <machine>" for a latency metric (names every machine if several)."""
    if not metric.startswith("latency"):
        return ""
    machines = sorted(set(_task_rows(rows, dataset, split)[MACHINE].dropna().astype(str)))
    return f", measured on {'; '.join(machines)}" if machines else ""


def _shared_costs(stats: pd.DataFrame, rel: float = 0.02) -> dict[float, float]:
    """Widths at which every method has the same cost (within ``rel``), with that cost.

    Such a width is named once on a top axis instead of once per method: dense and slimmable
    models of one width cost the same, and four identical labels on one vertical line are
    unreadable. Widths where methods differ (Split-Mix's ensembles) keep a label per point.
    """
    out = {}
    for w, s in stats.groupby("width"):
        lo, hi = s["cost"].min(), s["cost"].max()
        if len(s) > 1 and hi <= lo * (1 + rel):
            out[float(w)] = float(s["cost"].mean())
    return out


# ---- robustness ---------------------------------------------------------------------------------
def _robust_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """SA and RA (client means, mean over seeds) per method x width x lam with run config."""
    sa = client_mean(rows, "acc").rename(columns={"value": "sa"})
    ra = client_mean(rows, "robust_acc").rename(columns={"value": "ra"})
    keys = [*RUN_KEYS, *RUN_INFO, "width", "lam"]
    both = sa.merge(ra, on=keys)
    runs = rows.groupby(list(RUN_KEYS))[["train_lam", "is_at"]].first().reset_index()
    both = both.merge(runs, on=list(RUN_KEYS), how="left")
    both["dual"] = both["lam"].notna()
    return with_columns(both)


def _at_subset(pairs: pd.DataFrame) -> pd.DataFrame:
    """AT runs, plus the clean runs of a one-run-per-width algorithm (FedAvg) at a width where it
    was also adversarially trained (their lambda = 0 point of its trade-off)."""
    at = pairs[pairs["is_at"] | pairs["dual"]]
    keys = ["dataset", "split", "algorithm", "width"]
    per_width_at = at[at[PER_WIDTH]][keys].drop_duplicates()
    base = pairs[pairs[PER_WIDTH] & ~(pairs["is_at"] | pairs["dual"])]
    base = base.merge(per_width_at, on=keys)
    return pd.concat([at, base], ignore_index=True)


def _lam_of(s: pd.Series) -> float:
    lam = s["train_lam"]
    return float(lam) if pd.notna(lam) else (0.0 if not s["is_at"] else math.nan)


def ra_sa(rows: pd.DataFrame) -> list[Result]:
    """RA vs SA: FedAvg AT one point per training lambda; dual BN a curve over test lambda."""
    if not (rows["metric"] == "robust_acc").any():
        return [Skipped("ra_sa", "no robust_acc rows")]
    pairs = _at_subset(_robust_pairs(rows))
    if pairs.empty:
        return [Skipped("ra_sa", "no adversarially trained run with robust_acc rows")]
    out: list[Result] = []
    colors = method_colors(rows)
    for dataset, split in _tasks(pairs):
        g = _task_rows(pairs, dataset, split)
        fig, axes = _panels(1, size=(5.6, 4.2))
        ax = axes[0]
        handles = []
        labels: list[PointLabel] = []
        # single BN: one point per run (training lambda), joined per (algorithm, width)
        single = g[~g["dual"]].copy()
        if not single.empty:
            single["train"] = [_lam_of(r) for _, r in single.iterrows()]
            pts = single.groupby(["algorithm", "width", "train"]).agg(
                sa=("sa", "mean"), ra=("ra", "mean")).reset_index()  # fmt: skip
            markers = iter(("o", "s", "^", "D", "v", "P"))
            for (alg, w), s in pts.groupby(["algorithm", "width"]):
                s = s.sort_values("train")
                color = colors.get(alg, "0.3")
                mk = next(markers, "o")
                ax.plot(100 * s["sa"], 100 * s["ra"], ls="--", lw=1, color=color, marker=mk)
                labels += [PointLabel(100 * p["sa"], 100 * p["ra"], f"λ={p['train']:g}", color)
                           for _, p in s.iterrows()]  # fmt: skip
                handles.append(_line(color, f"{alg} {width_label(w)} (AT, one run per λ)",
                                     ls="--", marker=mk))  # fmt: skip
        # dual BN: a curve over the test lambda at the widest width of each method
        dual = g[g["dual"]]
        for col, s in dual.groupby("column"):
            s = s[s["width"] == s["width"].max()]
            s = s.groupby("lam").agg(sa=("sa", "mean"), ra=("ra", "mean")).reset_index()
            w = dual[dual["column"] == col]["width"].max()
            ax.plot(100 * s["sa"], 100 * s["ra"], lw=1.8, color=colors[col], marker="*", ms=9)
            labels += [PointLabel(100 * p["sa"], 100 * p["ra"], f"λ={p['lam']:g}", colors[col])
                       for _, p in s.iterrows()]  # fmt: skip
            handles.append(_line(colors[col], f"{col} {width_label(w)} (dual BN, test λ)",
                                 marker="*", ms=9))  # fmt: skip
        ax.set_xlabel("standard accuracy SA [%]")
        ax.set_ylabel("robust accuracy RA [%] (PGD)")
        ax.set_title(f"RA–SA trade-off: {dataset} / {split}")
        ax.margins(0.12)
        _legend(fig, handles)
        place_labels(fig, ax, labels)
        out.append(
            Made(
                _slug("ra_sa", dataset, split),
                fig,
                f"Robust (PGD) vs standard test accuracy [%] on {dataset}/{split}: dashed = one "
                "adversarially trained model per training λ (single BN); solid = one dual-BN "
                "model evaluated at several test λ (in-situ trade-off); mean over seeds.",
            )
        )
    return out


def joint(rows: pd.DataFrame) -> list[Result]:
    """SA and RA vs width for several lambdas (joint size and robustness customization)."""
    if not (rows["metric"] == "robust_acc").any():
        return [Skipped("joint", "no robust_acc rows")]
    pairs = _at_subset(_robust_pairs(rows))
    dual = pairs[pairs["dual"]]
    multi = dual.groupby(["dataset", "split", "column"])["width"].nunique()
    if dual.empty or not (multi >= 2).any():
        return [Skipped("joint", "needs a dual-BN (AT) run evaluated at >= 2 widths")]
    out: list[Result] = []
    for dataset, split in _tasks(pairs):
        g = _task_rows(pairs, dataset, split)
        d = g[g["dual"]]
        name = _slug("joint", dataset, split)
        if d.empty or d.groupby("column")["width"].nunique().max() < 2:
            out.append(Skipped(name, f"{dataset}/{split} has no dual-BN run at >= 2 widths"))
            continue
        lams = sorted(d["lam"].unique())
        cmap = mpl.colormaps["plasma"]
        lam_color = {x: cmap(0.85 * i / max(1, len(lams) - 1)) for i, x in enumerate(lams)}
        fig, axes = _panels(2, ncols=2, sharey=False, size=(4.6, 3.8))
        styles = iter(("-", "-.", ":"))
        handles: list[Any] = []
        for col, s in d.groupby("column"):
            ls = next(styles, "-")
            st = s.groupby(["lam", "width"])[["sa", "ra"]].mean().reset_index()
            for lam, sl in st.groupby("lam"):
                for ax, key in zip(axes, ("sa", "ra"), strict=True):
                    ax.plot(sl["width"], 100 * sl[key], ls=ls, marker="o", ms=4,
                            color=lam_color[lam])  # fmt: skip
            handles += [_line(lam_color[x], f"{col}, test λ={x:g}", ls=ls, marker="o")
                        for x in lams]  # fmt: skip
        single = g[~g["dual"]].copy()
        if not single.empty:
            single["train"] = [_lam_of(r) for _, r in single.iterrows()]
            st = single.groupby(["algorithm", "train", "width"])[["sa", "ra"]].mean().reset_index()
            gray = mpl.colormaps["Greys"]
            trains = sorted(st["train"].unique())
            for i, (key, sl) in enumerate(st.groupby(["algorithm", "train"])):
                color = gray(0.4 + 0.5 * i / max(1, len(trains) - 1))
                for ax, m in zip(axes, ("sa", "ra"), strict=True):
                    ax.plot(sl["width"], 100 * sl[m], ls="--", marker="s", ms=5, color=color)
                handles.append(_line(color, f"{key[0]}, train λ={key[1]:g}", ls="--",
                                     marker="s"))  # fmt: skip
        for ax, label in zip(axes, ("standard accuracy SA [%]", "robust accuracy RA [%]"),
                             strict=True):  # fmt: skip
            ax.set_xscale("log", base=2)
            ws = sorted(g["width"].unique())
            ax.set_xticks(ws, [width_label(w) for w in ws])
            ax.minorticks_off()
            ax.set_xlabel("width (fraction of the full model)")
            ax.set_ylabel(label)
            ax.set_title(label.split(" [")[0] + (" (PGD)" if "robust" in label else ""))
        _legend(fig, handles)
        fig.suptitle(f"Joint size and robustness customization: {dataset} / {split}")
        out.append(
            Made(
                name,
                fig,
                f"Standard and robust test accuracy [%] vs width on {dataset}/{split}: solid = "
                "one dual-BN model per method evaluated at each width and test λ; dashed grey = "
                "FedAvg trained adversarially per (width, training λ); mean over seeds.",
            )
        )
    return out


# ---- config variants: budgets, participation, BN/rescale ablation -------------------------------
def _runs(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [*VARIANT_COLUMNS, "num_clients", "is_at", "algorithm"]
    return rows.groupby(list(RUN_KEYS))[cols].first().reset_index()


def _controlled(acc: pd.DataFrame, runs: pd.DataFrame, vary: list[str]) -> pd.DataFrame:
    """Accuracy rows of runs whose OTHER settings are their algorithm's usual ones.

    A variant figure must compare runs that differ only in the varied setting; a participation
    variant must not leak into the budget figure's default panel.
    """
    controls = [c for c in VARIANT_COLUMNS if c not in vary]
    runs = runs[~runs["is_at"].astype(bool)].reset_index(drop=True)
    runs = runs[reference_filter(runs, controls)]
    return acc.merge(runs.drop(columns="algorithm"), on=list(RUN_KEYS), how="inner")


def _need_config(rows: pd.DataFrame, col: str) -> str | None:
    if rows[col].isna().all():
        return f"no run.json config ({col}) beside the rows"
    return None


def budget_distribution(rows: pd.DataFrame) -> list[Result]:
    """Accuracy per width for each budget distribution (Fig 11), one panel per budget string."""
    why = _need_config(rows, "budgets")
    if why:
        return [Skipped("budget_distribution", why)]
    acc = _controlled(clean_acc(rows), _runs(rows), ["budgets"])
    if acc.empty:
        return [Skipped("budget_distribution", "no test acc rows of non-AT runs")]
    adaptive = acc[~acc[PER_WIDTH]].dropna(subset=["budgets"])
    out: list[Result] = []
    colors = method_colors(rows)
    for dataset, split in _tasks(acc):
        g = _task_rows(adaptive, dataset, split)
        name = _slug("budget_distribution", dataset, split)
        specs = sorted(g["budgets"].unique(), key=str)
        if len(specs) < 2:
            out.append(Skipped(name, f"{dataset}/{split} has < 2 budget distributions"))
            continue
        fed = _task_rows(acc, dataset, split)
        fed = fed[fed[PER_WIDTH]]  # one run per width: a reference line, not a method's curve
        fig, axes = _panels(len(specs), ncols=4, size=(3.8, 3.4))
        for ax, spec in zip(axes, specs, strict=True):
            s = seed_stats(g[g["budgets"] == spec], ["algorithm", "width"])
            for alg, sa in s.groupby("algorithm"):
                ax.errorbar(sa["width"], 100 * sa["mean"], yerr=100 * sa["std"].fillna(0),
                            marker="o", ms=4, capsize=2, lw=1.4,
                            color=colors.get(alg, "0.3"), label=alg)  # fmt: skip
            for _, f in seed_stats(fed, ["algorithm", "width"]).groupby("algorithm"):
                ax.plot(f["width"], 100 * f["mean"], ls=":", marker="x", color="0.35")
            ws = sorted(g["width"].unique())
            ax.set_xticks(ws, [width_label(w) for w in ws], rotation=45 if len(ws) > 4 else 0)
            ax.set_title(f"budgets {spec}")
            ax.set_xlabel("width")
        for ax in axes[::4]:
            ax.set_ylabel(ACC_LABEL)
        algs = sorted(g["algorithm"].unique())
        handles = [_line(colors.get(a, "0.3"), a, marker="o") for a in algs]
        for alg in sorted(fed["algorithm"].unique()):
            handles.append(_line("0.35", f"{alg} (one run per width)", ls=":", marker="x"))
        _legend(fig, handles, "method")
        fig.suptitle(f"Budget distributions: {dataset} / {split}")
        out.append(
            Made(
                name,
                fig,
                f"Test accuracy [%] per width on {dataset}/{split} for each client budget "
                "distribution (budget string, one panel each); other settings fixed at each "
                "method's most common ones; mean ± std over seeds; dotted = FedAvg reference.",
            )
        )
    return out


def participation(rows: pd.DataFrame) -> list[Result]:
    """Accuracy vs clients sampled per round, one line per width, one panel per method."""
    why = _need_config(rows, "participation")
    if why:
        return [Skipped("participation", why)]
    acc = _controlled(clean_acc(rows), _runs(rows), ["participation"])
    if acc.empty:
        return [Skipped("participation", "no test acc rows of non-AT runs")]
    acc = acc.dropna(subset=["participation"])
    acc["clients"] = np.where(acc["participation"] < 0, acc["num_clients"], acc["participation"])
    out: list[Result] = []
    for dataset, split in _tasks(acc):
        g = _task_rows(acc, dataset, split)
        name = _slug("participation", dataset, split)
        varied = [a for a, s in g.groupby("algorithm") if s["clients"].nunique() >= 2]
        if not varied:
            out.append(
                Skipped(name, f"{dataset}/{split} has no method at >= 2 participation rates")
            )
            continue
        wcol = width_colors(list(g["width"]))
        fig, axes = _panels(len(varied), ncols=3)
        for ax, alg in zip(axes, varied, strict=True):
            s = seed_stats(g[g["algorithm"] == alg], ["width", "clients"])
            for w, sw in s.groupby("width"):
                sw = sw.sort_values("clients")
                ax.errorbar(sw["clients"], 100 * sw["mean"], yerr=100 * sw["std"].fillna(0),
                            marker="o", ms=4, capsize=2, color=wcol[w])  # fmt: skip
            ax.set_xscale("log")
            ticks = sorted(s["clients"].unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set_title(alg)
            ax.set_xlabel("clients sampled per round [count] (log scale)")
        axes[0].set_ylabel(ACC_LABEL)
        _legend(fig, [_line(wcol[w], width_label(w), marker="o") for w in sorted(wcol)], "width")
        fig.suptitle(f"Participation: {dataset} / {split}")
        counts = seed_stats(g, ["algorithm", "width", "clients"])["count"]
        out.append(
            Made(
                name,
                fig,
                f"Test accuracy [%] vs clients sampled per round on {dataset}/{split} (all "
                f"clients = the federation size), one line per width; mean ± std over "
                f"{_seeds_text(counts)}.",
            )
        )
    return out


def _combo_label(r: pd.Series) -> str:
    def flag(v: Any) -> str:
        return "–" if pd.isna(v) else ("T" if bool(v) else "F")

    return f"bn={r['bn']}, init={flag(r['rescale_init'])}, layer={flag(r['rescale_layer'])}"


def bn_ablation(rows: pd.DataFrame) -> list[Result]:
    """Accuracy per width for each (BN regime, rescale_init, rescale_layer) (Table 4)."""
    why = _need_config(rows, "bn")
    if why:
        return [Skipped("bn_ablation", why)]
    vary = ["bn", "rescale_init", "rescale_layer"]
    acc = _controlled(clean_acc(rows), _runs(rows), vary)
    if acc.empty:
        return [Skipped("bn_ablation", "no test acc rows of non-AT runs")]
    acc = acc.dropna(subset=["bn"])
    acc["combo"] = [_combo_label(r) for _, r in acc.iterrows()]
    out: list[Result] = []
    for dataset, split in _tasks(acc):
        g = _task_rows(acc, dataset, split)
        name = _slug("bn_ablation", dataset, split)
        varied = [a for a, s in g.groupby("algorithm") if s["combo"].nunique() >= 2]
        if not varied:
            out.append(Skipped(name, f"{dataset}/{split} has no method with >= 2 BN/rescale "
                                     "settings"))  # fmt: skip
            continue
        fig, axes = _panels(len(varied), ncols=2, size=(5.2, 3.4))
        for ax, alg in zip(axes, varied, strict=True):
            s = seed_stats(g[g["algorithm"] == alg], ["combo", "width"])
            combos = sorted(s["combo"].unique())
            widths = sorted(s["width"].unique())
            pal = sns.color_palette("Set2", n_colors=len(combos))
            step = 0.8 / len(combos)
            for i, combo in enumerate(combos):
                sc = s[s["combo"] == combo].set_index("width").reindex(widths)
                x = np.arange(len(widths)) - 0.4 + step * (i + 0.5)
                ax.bar(x, 100 * sc["mean"], width=step, color=pal[i], label=combo)
                ax.errorbar(x, 100 * sc["mean"], yerr=100 * sc["std"].fillna(0), fmt="none",
                            ecolor="0.25", elinewidth=0.8, capsize=2)  # fmt: skip
            ax.set_xticks(range(len(widths)), [width_label(w) for w in widths])
            ax.grid(axis="x", visible=False)
            lo = np.nanmin(100 * (s["mean"] - s["std"].fillna(0)))
            ax.set_ylim(max(0.0, lo - 10), min(100.0, np.nanmax(100 * s["mean"]) + 5))
            ax.set_xlabel("width")
            ax.set_ylabel(ACC_LABEL)
            ax.set_title(alg)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="setting", fontsize=8)
        fig.suptitle(f"BN / rescaling ablation: {dataset} / {split}")
        out.append(
            Made(
                name,
                fig,
                f"Test accuracy [%] per width on {dataset}/{split} for each BN regime (batch = "
                "batch statistics, tracked = server-averaged running statistics, local = FedBN) "
                "and Split-Mix rescaling (init = rescale_init, layer = rescale_layer; T/F); "
                "other settings fixed; mean ± std over seeds (y axis does not start at 0).",
            )
        )
    return out


BUILDERS: dict[str, Builder] = {
    "convergence": convergence,
    "per_domain": per_domain,
    "client_stats": client_stats,
    "flops_accuracy": flops_accuracy,
    "latency_accuracy": latency_accuracy,
    "ra_sa": ra_sa,
    "joint": joint,
    "budget_distribution": budget_distribution,
    "participation": participation,
    "bn_ablation": bn_ablation,
}
