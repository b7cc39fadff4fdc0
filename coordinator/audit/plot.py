"""Cumulative privacy spent per node over time, as a PNG (needs the ``plot`` extra).

matplotlib is imported only when a plot is asked for, so the audit works
without it; :class:`PlotUnavailable` says how to install it. Amounts become
floats here for drawing only; every figure printed elsewhere is exact.
"""

from __future__ import annotations

import io
from datetime import datetime
from fractions import Fraction

import numpy as np

from coordinator.audit.ledgers import parse_time
from coordinator.audit.report import NodeReport

MAX_LABEL_CHARS = 40


class PlotUnavailable(Exception):
    """matplotlib is not installed, or the plot cannot be drawn or written."""


def _label(node: NodeReport) -> str:
    # Node names come from untrusted exports: mathtext markers would make
    # matplotlib parse them as formulas, so they are escaped.
    return node.subject[:MAX_LABEL_CHARS].replace("$", r"\$") or "(unnamed)"


def _series(node: NodeReport) -> tuple[list[datetime], list[float]]:
    times: list[datetime] = []
    totals: list[float] = []
    total = Fraction(0)
    for charge in node.charges:
        when = parse_time(charge.at)
        if when is None:
            continue
        if not times:  # start from nothing spent, so the first step shows the first charge
            times.append(when)
            totals.append(0.0)
        total += charge.record.charge
        times.append(when)
        totals.append(float(total))
    return times, totals


def spend_png(nodes: tuple[NodeReport, ...]) -> bytes:
    """The chart as PNG bytes: one step line per node, cumulative spend against time."""
    try:
        from matplotlib import dates as mdates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(
            "plotting needs the 'plot' extra (matplotlib): pip install 'tiaki[plot]'"
        ) from None
    figure = Figure(figsize=(8.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    drawn = 0
    for node in nodes:
        times, totals = _series(node)
        if times:
            # numpy datetimes (naive, in UTC) are what matplotlib's date axis takes.
            stamps = np.array([t.replace(tzinfo=None) for t in times], dtype="datetime64[us]")
            axes.step(stamps, totals, where="post", label=_label(node))
            drawn += 1
    if drawn:
        axes.legend(loc="upper left", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no charges", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylim(bottom=0)
    axes.set_title("cumulative privacy spent per node")
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("spent")
    # Concise dates ("12:26\nNov 25") rather than matplotlib's default ticks,
    # which for a short span show only seconds with microseconds.
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_spend_plot(nodes: tuple[NodeReport, ...], path: str) -> None:
    data = spend_png(nodes)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise PlotUnavailable(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
