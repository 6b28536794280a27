"""Figure readability: point labels never overlap, rounds are whole numbers, width labels of
methods that share a cost are drawn once."""

from __future__ import annotations

import itertools

import matplotlib as mpl
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from splitmix.report import figures as F
from splitmix.report.load import load_rows

from . import synthetic
from .synthetic import Spec, at_specs, main_specs, write_runs

GLOB = "results/**/eval.csv"


def _boxes(fig: Figure, artists: list) -> list:
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.canvas.draw()
    return [a.get_window_extent(renderer) for a in artists]


def _overlapping(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2)
            if a.overlaps(b)]  # fmt: skip


def _annotations(ax) -> list[Annotation]:
    return [c for c in ax.get_children() if isinstance(c, Annotation)]


def test_labels_of_crowded_points_do_not_overlap_each_other_or_the_markers():
    # a dual-BN-like curve: five points within a few pixels of each other, plus far ones
    xs = [50.0, 50.4, 50.8, 51.2, 51.6, 40.0, 60.0]
    ys = [30.0, 30.3, 30.6, 30.9, 31.2, 20.0, 45.0]
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(xs, ys, marker="*")
    labels = [
        F.PointLabel(x, y, f"λ={i / 10:g}") for i, (x, y) in enumerate(zip(xs, ys, strict=True))
    ]
    # the old fixed offset puts the crowded labels on top of each other: the test can fail
    naive = [ax.annotate(lb.text, (lb.x, lb.y), xytext=(4, -10), textcoords="offset points",
                         fontsize=7) for lb in labels]  # fmt: skip
    assert _overlapping(_boxes(fig, naive))
    for a in naive:
        a.remove()
    placed = F.place_labels(fig, ax, labels)
    assert [a.get_text() for a in placed] == [lb.text for lb in labels]
    boxes = _boxes(fig, placed)
    assert _overlapping(boxes) == []
    frame = ax.get_window_extent()
    markers = ax.transData.transform([(lb.x, lb.y) for lb in labels])
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
        assert box.y1 <= frame.y1
        assert not any(box.contains(mx, my) for mx, my in markers)


def test_a_label_repeated_at_the_same_point_is_drawn_once():
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([1, 2], [1, 2], "o")
    labels = [F.PointLabel(1, 1, "×1/8"), F.PointLabel(1, 1, "×1/8"), F.PointLabel(2, 2, "×1")]
    assert [a.get_text() for a in F.place_labels(fig, ax, labels)] == ["×1/8", "×1"]


@pytest.fixture
def few_rounds(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "ROUNDS", 3)
    write_runs(tmp_path, main_specs(("digits",), seeds=(1,)))
    return load_rows(str(tmp_path / GLOB))


def test_convergence_with_few_rounds_has_integer_round_ticks(few_rounds):
    with mpl.rc_context(F.STYLE):
        (made,) = F.convergence(few_rounds)
    FigureCanvasAgg(made.fig).draw()
    for ax in made.fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) >= 2
        assert all(float(t).is_integer() for t in ticks), ticks


def test_widths_of_equal_cost_are_named_once_on_a_top_axis(few_rounds):
    with mpl.rc_context(F.STYLE):
        (made,) = F.flops_accuracy(few_rounds)
    ax = made.fig.axes[0]
    # synthetic models of one width cost the same for every method: no per-point label at all
    assert _annotations(ax) == []
    (top,) = [c for c in ax.get_children() if type(c).__name__ == "SecondaryAxis"]
    assert [t.get_text() for t in top.get_xticklabels()] == ["×1/8", "×1/4", "×1/2", "×1"]


def test_a_width_whose_cost_differs_per_method_keeps_its_point_labels(tmp_path):
    write_runs(tmp_path, main_specs(("digits",), seeds=(1,)))
    rows = load_rows(str(tmp_path / GLOB))
    # Split-Mix at x1 runs 8 bases of x1/8: an eighth of the dense model's MACs
    cheap = (rows["method"] == "splitmix") & (rows["metric"] == "macs") & (rows["width"] == 1.0)
    rows.loc[cheap, "value"] /= 8
    with mpl.rc_context(F.STYLE):
        (made,) = F.flops_accuracy(rows)
    ax = made.fig.axes[0]
    texts = sorted(a.get_text() for a in _annotations(ax))
    assert set(texts) == {"×1"} and 2 <= len(texts) <= 3  # x1 points differ per method
    (top,) = [c for c in ax.get_children() if type(c).__name__ == "SecondaryAxis"]
    assert [t.get_text() for t in top.get_xticklabels()] == ["×1/8", "×1/4", "×1/2"]
    assert _overlapping(_boxes(made.fig, _annotations(ax))) == []


def test_ra_sa_lambda_labels_do_not_overlap(tmp_path):
    specs = at_specs("digits") + [
        Spec("digits", "splitmix_dbn2", "splitmix", 1, (1.0,), train_lam=0.5, bn="tracked",
             test_lams=tuple(np.round(np.linspace(0, 1, 11), 2)), robust=True)
    ]  # fmt: skip
    write_runs(tmp_path, specs)
    rows = load_rows(str(tmp_path / GLOB))
    with mpl.rc_context(F.STYLE):
        (made,) = F.ra_sa(rows)
    ax = made.fig.axes[0]
    labels = _annotations(ax)
    assert sum(a.get_text().startswith("λ=") for a in labels) >= 5 + 11
    assert _overlapping(_boxes(made.fig, labels)) == []
