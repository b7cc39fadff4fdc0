"""Privacy spent per node over time, as a PNG (needs the ``plot`` extra).

One small panel per node, on a shared time axis: a single chart of every node
hides all but one line whenever nodes answer the same questions (they then
spend the same amounts at the same moments). Each panel draws the node's
spending as a step line, its policy's limits as dashed lines (stepped where
the policy changed), and labels its axis with the unit of the node's privacy
definition (ε or ρ), since the same number means different things in each.

matplotlib is imported only when a plot is asked for, so the audit works
without it; :class:`PlotUnavailable` says how to install it. Amounts become
floats here for drawing only; every figure printed elsewhere is exact, and the
amounts in legends are rounded exactly with :func:`tiaki.budget.display_amount`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator.audit.ledgers import parse_time
from coordinator.audit.report import NodeReport
from tiaki.budget import display_amount

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_LABEL_CHARS = 40
FIGURE_WIDTH = 11.6  # inches at 100 dpi: 1160 px, the width of the HTML page's column
PANEL_HEIGHT = 2.1
TITLE_HEIGHT = 0.6
# Policy periods that reset the period limit ("none" is one period for the lifetime).
PERIOD_KINDS = ("yearly", "quarterly", "monthly")
LIMIT_COLOUR = "#b03030"
LIFETIME_LIMIT_COLOUR = "#555555"


class PlotUnavailable(Exception):
    """matplotlib is not installed, or the plot cannot be drawn or written."""


@dataclass(frozen=True)
class Step:
    """A step line: ``values[i]`` holds from ``times[i]`` until the next time."""

    times: list[datetime]
    values: list[float]


def _safe(text: str) -> str:
    # Names come from untrusted exports: mathtext markers would make
    # matplotlib parse them as formulas, so they are escaped.
    return text[:MAX_LABEL_CHARS].replace("$", r"\$")


def _label(node: NodeReport) -> str:
    return _safe(node.subject) or "(unnamed)"


def _timed(node: NodeReport) -> list[tuple[datetime, str, Fraction]]:
    """(time, period label, charge) of each charge whose time can be read."""
    out = []
    for placed in node.charges:
        when = parse_time(placed.at)
        if when is not None:
            out.append((when, placed.record.period, placed.record.charge))
    return out


def _series(node: NodeReport) -> tuple[list[datetime], list[float]]:
    """Cumulative spending over the node's lifetime."""
    times: list[datetime] = []
    totals: list[float] = []
    total = Fraction(0)
    for when, _, amount in _timed(node):
        if not times:  # start from nothing spent, so the first step shows the first charge
            times.append(when)
            totals.append(0.0)
        total += amount
        times.append(when)
        totals.append(float(total))
    return times, totals


def _period_series(node: NodeReport) -> Step:
    """Spending within each budget period: back to zero where a new period began
    (at its roll-over entry, or at its first charge if the roll-over is not at hand)."""
    began: dict[str, datetime] = {}
    for placed in node.period_starts:
        when = parse_time(placed.at)
        if when is not None:
            began.setdefault(placed.record.period, when)
    times: list[datetime] = []
    values: list[float] = []
    current: str | None = None
    spent = Fraction(0)
    for when, label, amount in _timed(node):
        if label != current:
            reset = when  # the first period starts the line at its first charge
            rollover = began.get(label)
            if times and rollover is not None and times[-1] <= rollover <= when:
                reset = rollover
            times.append(reset)
            values.append(0.0)
            current, spent = label, Fraction(0)
        spent += amount
        times.append(when)
        values.append(float(spent))
    return Step(times, values)


@dataclass(frozen=True)
class Limits:
    """A node's limits over time: ``period[i]`` and ``lifetime[i]`` hold from ``times[i]``."""

    times: list[datetime]
    period: list[Fraction]
    lifetime: list[Fraction | None]

    def period_step(self) -> Step:
        return Step(self.times, [float(v) for v in self.period])

    def lifetime_step(self) -> Step:
        # NaN where no lifetime limit was set: matplotlib leaves it undrawn.
        return Step(self.times, [np.nan if v is None else float(v) for v in self.lifetime])


def _limits(node: NodeReport, start: datetime) -> Limits:
    """The policy in force at ``start`` (the left edge of the time axis), and every
    later change."""
    limits = Limits([], [], [])
    for placed in node.policies:
        when = parse_time(placed.at)
        if when is None:
            continue
        when = max(when, start)  # a policy from before the first charge holds from it
        if limits.times and limits.times[-1] == when:  # superseded at the same moment
            limits.times.pop()
            limits.period.pop()
            limits.lifetime.pop()
        limits.times.append(when)
        limits.period.append(placed.record.limit)
        limits.lifetime.append(placed.record.lifetime_limit)
    return limits


def _stamps(times: Sequence[datetime]) -> np.ndarray:
    # numpy datetimes (naive, in UTC) are what matplotlib's date axis takes.
    return np.array([t.replace(tzinfo=None) for t in times], dtype="datetime64[us]")


def _draw_step(axes: Axes, step: Step, end: datetime, **style: Any) -> None:
    """A step line carried on to ``end``, so its last value is seen as a level."""
    if not step.times:
        return
    times = [*step.times, max(end, step.times[-1])]
    values = [*step.values, step.values[-1]]
    axes.step(_stamps(times), values, where="post", **style)


def _limit_label(what: str, values: Iterable[Fraction | None], unit: str) -> str:
    """E.g. "quarterly limit 2 ε", or "limit 2 → 3 ε" when the policy changed it."""
    shown: list[str] = []
    for value in values:
        text = "none" if value is None else display_amount(value)
        if not shown or shown[-1] != text:
            shown.append(text)
    return f"{what} {' → '.join(shown)}{' ' + unit if unit else ''}"


def _panel(
    axes: Axes, node: NodeReport, colour: str, span: tuple[datetime, datetime] | None
) -> None:
    unit = node.unit
    axes.set_title(_panel_title(node), loc="left", fontsize=10)
    axes.set_ylabel(f"{unit} spent" if unit else "spent")
    times, totals = _series(node)
    if span is None or not times:
        axes.text(0.5, 0.5, "no charges", ha="center", va="center", transform=axes.transAxes)
        axes.set_yticks([])
        return
    start, end = span
    total = Step(times, totals)
    if len({label for _, label, _ in _timed(node)}) > 1:
        # The total keeps rising across roll-overs, while the period limit applies
        # to what was spent in the period: draw both, the total wide and pale
        # underneath so that both show where they coincide.
        _draw_step(axes, total, end, color=colour, alpha=0.3, linewidth=4.5, label="spent in total")
        _draw_step(
            axes,
            _period_series(node),
            end,
            color=colour,
            linewidth=1.8,
            label="spent in the period",
        )
    else:
        _draw_step(axes, total, end, color=colour, linewidth=1.8, label="spent")
    top = max(totals)
    limits = _limits(node, start)
    if limits.times:
        kind = node.policies[-1].record.period
        what = f"{kind} limit" if kind in PERIOD_KINDS else "limit"
        _draw_step(
            axes,
            limits.period_step(),
            end,
            color=LIMIT_COLOUR,
            linestyle="--",
            linewidth=1.4,
            label=_limit_label(what, limits.period, unit),
        )
        top = max(top, float(max(limits.period)))
        lifetime = [v for v in limits.lifetime if v is not None]
        if lifetime:
            _draw_step(
                axes,
                limits.lifetime_step(),
                end,
                color=LIFETIME_LIMIT_COLOUR,
                linestyle="-.",
                linewidth=1.4,
                label=_limit_label("lifetime limit", limits.lifetime, unit),
            )
            top = max(top, float(max(lifetime)))
    top = top if top > 0 else 1.0
    # A little below zero, so that a line back at zero (a new period) is not
    # hidden by the axis.
    axes.set_ylim(-0.03 * top, 1.15 * top)
    axes.grid(axis="y", color="#dddddd", linewidth=0.6)
    # Outside the axes, so that the legend never hides a line.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _panel_title(node: NodeReport) -> str:
    spent = display_amount(node.spent)
    unit = f" {node.unit}" if node.unit else ""
    queries = "1 query" if node.queries == 1 else f"{node.queries} queries"
    return f"{_label(node)}: {spent}{unit} spent, {queries}"


def _span(nodes: Sequence[NodeReport]) -> tuple[datetime, datetime] | None:
    """The time axis every panel shares: first to last charge, a little wider, so
    that the first charge's step is not drawn on the axis itself."""
    times = [when for node in nodes for when, _, _ in _timed(node)]
    if not times:
        return None
    first, last = min(times), max(times)
    # In proportion to the span, which may be seconds (a test run) or years;
    # more on the right, where the last level is carried on to be seen.
    pad = (last - first) / 40 if last > first else timedelta(seconds=1)
    return first - pad, last + 2 * pad


def spend_figure(nodes: Sequence[NodeReport]) -> Figure:
    """The chart as a matplotlib figure: one panel per node (see the module docs)."""
    try:
        from matplotlib import dates as mdates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(
            "plotting needs the 'plot' extra (matplotlib): pip install 'tiaki[plot]'"
        ) from None
    panels = max(1, len(nodes))
    figure = Figure(
        figsize=(FIGURE_WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * panels), layout="constrained"
    )
    FigureCanvasAgg(figure)
    figure.suptitle("privacy spent per node", fontsize=12)
    grid = figure.subplots(panels, 1, sharex=True, squeeze=False)
    span = _span(nodes)
    for number, node in enumerate(nodes):
        # Each node its own colour, as in a single chart, so panels are told apart at a glance.
        _panel(grid[number][0], node, f"C{number % 10}", span)
    bottom: Axes = grid[-1][0]
    if not nodes:
        bottom.text(
            0.5, 0.5, "no node exports", ha="center", va="center", transform=bottom.transAxes
        )
    if span is not None:
        first, last = _stamps(span)
        bottom.set_xlim(first, last)
        bottom.set_xlabel("time (UTC)")
        # Concise dates ("12:26\nNov 25") rather than matplotlib's default ticks,
        # which for a short span show only seconds with microseconds.
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        bottom.xaxis.set_major_locator(locator)
        bottom.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    return figure


def spend_png(nodes: Sequence[NodeReport]) -> bytes:
    """The chart as PNG bytes."""
    buffer = io.BytesIO()
    spend_figure(nodes).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_spend_plot(nodes: Sequence[NodeReport], path: str) -> None:
    data = spend_png(nodes)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise PlotUnavailable(f"cannot write the plot to {path}: {exc.strerror or exc}") from None
