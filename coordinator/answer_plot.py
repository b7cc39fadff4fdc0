"""A federated answer as a bar chart with 95% error bars, written as PNG.

Kept apart from :mod:`coordinator.output` because it needs the ``plot`` extra
(matplotlib), imported only when a chart is asked for.
"""

from __future__ import annotations

import math
from pathlib import Path

from coordinator.output import OutputError, answer_title, cell_label, counting_note
from coordinator.results import DP_NOISE_ONLY, FederatedAnswer
from tiaki.query import QueryKind

MAX_PLOT_CELLS = 300


def plot(answer: FederatedAnswer, path: Path) -> None:
    """A bar chart of the estimates with 95% error bars, saved as PNG at ``path``."""
    if not answer.released:
        raise OutputError(
            "nothing was released (--require-all and some node did not answer); nothing to plot"
        )
    cells = answer.cells
    if not cells:
        raise OutputError("no node answered; there is nothing to plot")
    if len(cells) > MAX_PLOT_CELLS:
        raise OutputError(
            f"the answer has {len(cells)} cells, too many for one chart (at most "
            f"{MAX_PLOT_CELLS}); use --format csv and plot a selection"
        )
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OutputError("plotting needs the 'plot' extra: pip install 'tiaki[plot]'") from None

    nan = math.nan
    heights = [c.estimate if math.isfinite(c.estimate) else nan for c in cells]
    below = [
        max(0.0, c.estimate - c.ci_low) if math.isfinite(c.estimate - c.ci_low) else 0.0
        for c in cells
    ]
    above = [
        max(0.0, c.ci_high - c.estimate) if math.isfinite(c.ci_high - c.estimate) else 0.0
        for c in cells
    ]
    labels = [cell_label(c) for c in cells]
    rotate = len(cells) > 8 or max(len(label) for label in labels) > 12

    width = min(40.0, max(6.0, 0.35 * len(cells) + 2.0))
    figure = Figure(figsize=(width, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(cells)))
    bars = axes.bar(
        positions, heights, yerr=[below, above], capsize=3, color="#4c72b0", ecolor="#222222"
    )
    flagged = False
    for bar, cell in zip(bars, cells, strict=True):
        if cell.unreliable:  # hatched and pale: read as noise or a bound
            bar.set_facecolor("#dde3ee")
            bar.set_hatch("///")
            bar.set_edgecolor("#4c72b0")
            flagged = True
    axes.set_xticks(positions)
    axes.set_xticklabels(
        labels,
        rotation=60 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=8,
    )
    axes.set_title(answer_title(answer), wrap=True, fontsize=10)
    axes.set_ylabel("estimate (bars: 95% CI)")
    if answer.query.kind is QueryKind.PROPORTION:
        axes.set_ylim(0.0, 1.0)
    axes.axhline(0.0, color="#888888", linewidth=0.8)
    # A figure-level x label is the footnote: constrained layout makes room for it.
    legend = "Hatched bars: unreliable (interval too wide, denominator near zero, or clamped).\n"
    figure.supxlabel(
        f"{legend if flagged else ''}{counting_note(answer)}\n"
        f"coverage: {answer.coverage}. query id {answer.query_id}.\n{DP_NOISE_ONLY}",
        x=0.01,
        ha="left",
        fontsize=7,
        color="#444444",
    )
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise OutputError(f"cannot write the plot to {path}: {exc}") from None
