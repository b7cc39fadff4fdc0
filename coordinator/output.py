"""Answers rendered for people (tables, plots) and programs (JSON, CSV).

Federated answers (:class:`~coordinator.results.FederatedAnswer`):

* :func:`federated_table` -- a readable table, one row per cell in the order
  the cells were combined (schema category order), followed by coverage,
  which nodes did not answer and why, what each node charged, the query id,
  the confidence-interval method and the DP-noise-only caveat.
* :func:`federated_json` -- a stable document for programs::

      {
        "query_id": str,
        "title": str,              # the whole question in words (describe_question)
        "query": {...},            # the canonical query text, parsed
        "cost_per_node": {"epsilon" | "rho": str},   # exact decimal text
        "counting": str,           # what was counted, and people at several NGOs
        "released": bool,          # false: --require-all and some node did not answer
        "coverage": {"answered": [node, ...], "total": int},
        "cells": [                 # empty when nothing was released
          {"group": {column: category, ...},
           "bin": str,             # histograms only
           "estimate": float | null,
           "ci95": [low, high],    # floats or null
           "half_width": float | null,
           "method": str,
           "nodes": int,
           "reliable": bool,        # false: read as noise or a bound, not an estimate
           "unreliable_reasons": [str, ...]}
        ],
        "nodes": [
          {"node": str, "status": str, "reason": str,
           "charged": str | null,  # exact decimal text of the charge, as in the ledgers
           "charged_now": str | null,  # "0" for a replay (the stored answer, free)
           "charge": str,          # the same in words, as the table says it
           "attempts": int, "seconds": float}
        ],
        "note": str                # the intervals cover DP noise only
      }

  Numbers are written in full precision; a non-finite number is ``null``.
* :func:`federated_csv` -- one row per cell: the group columns, ``bin`` for
  histograms, ``estimate, ci_low, ci_high, half_width, nodes, method,
  reliable, unreliable_reasons``, and on every row what it is of:
  ``query_id, question, cost_per_node, definition, nodes_covered``.
* :func:`coordinator.answer_plot.plot` -- a bar chart with 95% error bars,
  written as PNG (its own module: it needs the ``plot`` extra, matplotlib).

Single-node answers (:class:`~tiaki.answer.Answer`) keep their own views,
:func:`answer_table` and :func:`answer_json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Literal

from tabulate import tabulate

from coordinator.results import (
    DP_NOISE_ONLY,
    CombinedCell,
    FederatedAnswer,
    NodeOutcome,
    NodeStatus,
)
from coordinator.secure_output import secure_doc, secure_lines
from tiaki.answer import Answer
from tiaki.budget import display_amount, format_amount
from tiaki.errors import TiakiError
from tiaki.query import Filter, InSet, NumericRange, Query, QueryKind

COUNT_KINDS = frozenset({QueryKind.COUNT, QueryKind.COUNT_CLIENTS, QueryKind.HISTOGRAM})
UNRELIABLE_MARK = "†"


class OutputError(TiakiError):
    """An answer cannot be rendered as asked (missing plot extra, unwritable file, ...)."""


# ---------------------------------------------------------------- formatting


def _round(value: float, digits: int = 4) -> float | int:
    if not math.isfinite(value) or value == 0:
        return value
    if value.is_integer() and abs(value) < 1e15:
        return int(value)
    return round(value, max(0, digits - 1 - math.floor(math.log10(abs(value)))))


def _significant(value: float, digits: int = 4) -> str:
    """About ``digits`` significant digits, without exponent notation for ordinary sizes."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 15 or magnitude < -6:
        return f"{value:.{digits - 1}e}"
    places = max(0, digits - 1 - magnitude)
    text = f"{value:.{places}f}"
    return "0" if float(text) == 0 else text


def _count(value: float, how: Literal["round", "floor", "ceil"] = "round") -> str:
    """A count as a whole number; interval ends are widened outwards, never inwards."""
    if not math.isfinite(value):
        return "n/a"
    tidy = round(value, 6)  # float dust such as 99.0000000001 is not a reason to widen
    if how == "floor":
        return str(math.floor(tidy))
    if how == "ceil":
        return str(math.ceil(tidy))
    return str(round(tidy))


def _is_count(answer: FederatedAnswer) -> bool:
    return answer.query.kind in COUNT_KINDS


def _has_bins(answer: FederatedAnswer) -> bool:
    return answer.query.kind is QueryKind.HISTOGRAM or any(c.bin for c in answer.cells)


def _released_cells(answer: FederatedAnswer) -> tuple[CombinedCell, ...]:
    return answer.cells if answer.released else ()


def _unanswered(answer: FederatedAnswer) -> list[NodeOutcome]:
    return [o for o in answer.outcomes if not o.answered]


def _methods(answer: FederatedAnswer) -> list[str]:
    return list(dict.fromkeys(c.method for c in _released_cells(answer) if c.method))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def describe_question(query: Query) -> str:
    """The whole question in one line: kind, column, condition, group-by, filters, bounds, cost.

    Everything a reader needs to know what a number is of; every output's title.
    """
    what = f"{query.kind.value} of {query.column}" if query.column else query.kind.value
    if query.condition:
        what += " with " + " and ".join(_describe_filter(f) for f in query.condition)
    if query.group_by:
        what += f" by {', '.join(query.group_by)}"
    if query.filters:
        what += " where " + " and ".join(_describe_filter(f) for f in query.filters)
    if query.bounds is not None:
        what += f", clamped to [{query.bounds.lower:g}, {query.bounds.upper:g}]"
    if query.bin_edges:
        what += f", bins at {', '.join(f'{e:g}' for e in query.bin_edges)}"
    symbol = query.cost.definition.symbol
    return f"{what}; {symbol} {display_amount(query.cost.amount)} per node"


def answer_title(answer: FederatedAnswer) -> str:
    return describe_question(answer.query)


def _per_node_k(answer: FederatedAnswer) -> str:
    """Each node's records-per-client bound, grouped: "4 at ngo-a, ngo-b; 2 at ngo-c"."""
    by_k: dict[int, list[str]] = {}
    for outcome in answer.outcomes:
        if outcome.answer is not None and outcome.answer.max_records_per_client:
            by_k.setdefault(outcome.answer.max_records_per_client, []).append(outcome.node)
    if not by_k:
        return "its max_records_per_client"
    return "; ".join(f"{k} at {', '.join(nodes)}" for k, nodes in sorted(by_k.items()))


def counting_note(answer: FederatedAnswer) -> str:
    """One line saying what was counted, and how people at several NGOs are counted."""
    kind, k = answer.query.kind, _per_node_k(answer)
    several = "a person served by several NGOs is counted at each"
    if kind in (QueryKind.COUNT, QueryKind.HISTOGRAM):
        return (
            f"Counts records (service episodes) after each node kept at most k records per "
            f"client (k = {k}), summed over nodes; {several}."
        )
    if kind is QueryKind.COUNT_CLIENTS:
        return f"Counts distinct clients at each node, summed over nodes; {several}."
    if kind is QueryKind.PROPORTION:
        return (
            "Shares of clients: clients meeting the condition over clients in scope, each "
            f"counted per node and summed over nodes; {several}."
        )
    return (
        f"Over records after each node kept at most k records per client (k = {k}), each "
        "value clamped to the bounds in force at its node; "
        f"{several}."
    )


def _unreliable_legend(answer: FederatedAnswer) -> list[str]:
    lines = []
    for cell in _released_cells(answer):
        if cell.unreliable:
            lines.append(f"  {UNRELIABLE_MARK} {cell_label(cell)}: {'; '.join(cell.unreliable)}")
    if not lines:
        return []
    return [f"{UNRELIABLE_MARK} unreliable, read as noise or a bound, not as an estimate:", *lines]


def cell_label(cell: CombinedCell) -> str:
    """A cell's groups (and bin) joined, as a chart or a footnote names it."""
    return " / ".join([*cell.group, *([cell.bin] if cell.bin else [])]) or "all"


def _describe_filter(flt: Filter) -> str:
    if isinstance(flt, InSet):
        return (
            f"{flt.column} in {{{', '.join(flt.values)}}}"
            if len(flt.values) > 1
            else (f"{flt.column} = {flt.values[0]}")
        )
    low: object = flt.min if isinstance(flt, NumericRange) else flt.start
    high: object = flt.max if isinstance(flt, NumericRange) else flt.end
    # Numbers as people write them (1, not 1.0); dates as ISO text.
    low, high = (f"{v:g}" if isinstance(v, float) else v for v in (low, high))
    if low is not None and high is not None:
        return f"{low} ≤ {flt.column} ≤ {high}"
    return f"{flt.column} ≥ {low}" if low is not None else f"{flt.column} ≤ {high}"


# ---------------------------------------------------------------- federated table


def _outcome_line(outcome: NodeOutcome) -> str:
    if outcome.answered and not outcome.reason:
        return f"  {outcome.node}: {outcome.status.value}"
    return f"  {outcome.node}: {outcome.status.value} — {outcome.reason or 'no reason given'}"


REPLAYED_WORDS = "replayed, no charge"


def charge_words(outcome: NodeOutcome, symbol: str) -> str:
    """What this question cost at one node now, in the words table and JSON share."""
    if outcome.status is NodeStatus.REPLAYED:
        return REPLAYED_WORDS
    if outcome.charged:
        return f"{symbol} {display_amount(outcome.charged)}"
    return "nothing"


def _charges_line(answer: FederatedAnswer) -> str:
    symbol = answer.query.cost.definition.symbol
    parts = [f"{o.node} {charge_words(o, symbol)}" for o in answer.outcomes]
    return "charged (each node accounts for its own clients): " + ", ".join(parts)


def federated_table(answer: FederatedAnswer) -> str:
    """A readable table of the combined cells and what happened at each node."""
    lines: list[str] = [answer_title(answer), ""]
    if not answer.released and answer.secure is not None:
        lines.append(
            f"Nothing was released: {answer.secure.stopped} Asking again is a new session "
            "and a new charge."
        )
        lines.append("")
        lines.append("node outcomes:")
        lines.extend(_outcome_line(o) for o in answer.outcomes)
        lines.append("")
        lines.append(_charges_line(answer))
        lines.append(f"query id {answer.query_id}")
        return "\n".join(lines)
    if not answer.released:
        failed = [o for o in _unanswered(answer) if o.status is not NodeStatus.SKIPPED]
        names = ", ".join(o.node for o in failed) or "none"
        lines.append(
            "Nothing was released: every node was required to answer (--require-all), "
            f"and {len(failed)} of {len(answer.outcomes)} could not ({names}); "
            "the others were not asked or their answers were withheld."
        )
        lines.append("")
        lines.append("node outcomes:")
        lines.extend(_outcome_line(o) for o in answer.outcomes)
        lines.append("")
        lines.append(_charges_line(answer))
        lines.append(f"query id {answer.query_id}")
        return "\n".join(lines)

    counts = _is_count(answer)
    has_bins = _has_bins(answer)
    headers = [*answer.group_by, *(["bin"] if has_bins else []), "estimate", "95% CI", "nodes"]
    rows: list[list[str]] = []
    for cell in answer.cells:
        if counts:
            estimate = _count(cell.estimate)
            interval = f"{_count(cell.ci_low, 'floor')} – {_count(cell.ci_high, 'ceil')}"
        else:
            estimate = _significant(cell.estimate)
            interval = f"{_significant(cell.ci_low)} – {_significant(cell.ci_high)}"
        if cell.unreliable:
            estimate = f"{estimate} {UNRELIABLE_MARK}"
        rows.append(
            [*cell.group, *([cell.bin] if has_bins else []), estimate, interval, str(cell.nodes)]
        )
    if rows:
        align = ["left"] * (len(headers) - 3) + ["right", "right", "right"]
        lines.append(tabulate(rows, headers=headers, disable_numparse=True, colalign=align))
    else:
        lines.append("(no cells: no node answered)")
    lines.append("")
    lines.extend(_unreliable_legend(answer))
    lines.append(counting_note(answer))
    lines.append(f"coverage: {answer.coverage}")
    lines.extend(secure_lines(answer))
    missing = _unanswered(answer)
    if missing:
        lines.append("did not answer (not included above):")
        lines.extend(_outcome_line(o) for o in missing)
    lines.append(_charges_line(answer))
    lines.append(f"query id {answer.query_id}")
    methods = _methods(answer)
    if methods:
        label = "CI method" if len(methods) == 1 else "CI methods"
        lines.append(f"{label}: {'; '.join(methods)}")
    lines.append(DP_NOISE_ONLY)
    return "\n".join(lines)


# ---------------------------------------------------------------- federated JSON


def _cell_doc(answer: FederatedAnswer, cell: CombinedCell) -> dict[str, Any]:
    doc: dict[str, Any] = {"group": dict(zip(answer.group_by, cell.group, strict=True))}
    if cell.bin:
        doc["bin"] = cell.bin
    doc.update(
        {
            "estimate": _finite(cell.estimate),
            "ci95": [_finite(cell.ci_low), _finite(cell.ci_high)],
            "half_width": _finite(cell.half_width),
            "method": cell.method,
            "nodes": cell.nodes,
            "reliable": cell.reliable,
            "unreliable_reasons": list(cell.unreliable),
        }
    )
    return doc


def federated_json(answer: FederatedAnswer) -> str:
    """The documented JSON document (see the module docstring)."""
    doc = {
        "query_id": answer.query_id,
        "title": answer_title(answer),
        "query": json.loads(answer.query.canonical()),
        "cost_per_node": {
            answer.query.cost.definition.symbol: format_amount(answer.query.cost.amount)
        },
        "counting": counting_note(answer),
        "released": answer.released,
        "coverage": {"answered": list(answer.answered_nodes), "total": len(answer.outcomes)},
        "cells": [_cell_doc(answer, cell) for cell in _released_cells(answer)],
        "nodes": [
            {
                "node": o.node,
                "status": o.status.value,
                "reason": o.reason,
                "charged": format_amount(o.charged) if o.charged is not None else None,
                # What asking cost now: a replay returns the stored answer for free
                # ("charged" is then what the node charged when it first answered).
                "charged_now": "0"
                if o.status is NodeStatus.REPLAYED
                else (format_amount(o.charged) if o.charged is not None else None),
                "charge": charge_words(o, answer.query.cost.definition.symbol),
                "attempts": o.attempts,
                "seconds": _finite(o.seconds),
            }
            for o in answer.outcomes
        ],
        "note": DP_NOISE_ONLY,
    }
    if answer.secure is not None:
        doc["secure"] = secure_doc(answer.secure)
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------------- federated CSV


def _csv_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


def federated_csv(answer: FederatedAnswer) -> str:
    """One row per released cell; numbers in full precision, empty when not finite."""
    has_bins = _has_bins(answer)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            *answer.group_by,
            *(["bin"] if has_bins else []),
            "estimate",
            "ci_low",
            "ci_high",
            "half_width",
            "nodes",
            "method",
            "reliable",
            "unreliable_reasons",
            "query_id",
            "question",
            "cost_per_node",
            "definition",
            "nodes_covered",
        ]
    )
    # Each row says what it is of, so a row copied into a spreadsheet stays meaningful.
    cost = format_amount(answer.query.cost.amount)
    definition = answer.query.cost.definition.value
    covered = ";".join(answer.answered_nodes)
    for cell in _released_cells(answer):
        writer.writerow(
            [
                *cell.group,
                *([cell.bin] if has_bins else []),
                _csv_number(cell.estimate),
                _csv_number(cell.ci_low),
                _csv_number(cell.ci_high),
                _csv_number(cell.half_width),
                cell.nodes,
                cell.method,
                "true" if cell.reliable else "false",
                "; ".join(cell.unreliable),
                answer.query_id,
                answer_title(answer),
                cost,
                definition,
                covered,
            ]
        )
    return out.getvalue()


# ---------------------------------------------------------------- single node


def answer_table(answer: Answer) -> str:
    has_bins = any(cell.bin for cell in answer.cells)
    headers = [*answer.group_by, *(["bin"] if has_bins else []), "estimate", "± 95%"]
    rows = [
        [
            *cell.group,
            *([cell.bin] if has_bins else []),
            _round(cell.value),
            _round(cell.accuracy_95),
        ]
        for cell in answer.cells
    ]
    lines = [tabulate(rows, headers=headers, disable_numparse=True)]
    lines.append("")
    lines.append(
        f"node {answer.node_id}: charged {answer.charged.definition.symbol} "
        f"{display_amount(answer.charged.amount)}"
        + (
            " (stored answer to a repeated query id; nothing charged now)"
            if answer.replayed
            else ""
        )
    )
    if answer.budget is not None:
        lines.append(
            f"remaining in {answer.budget.current.label}: {display_amount(answer.budget.available)}"
        )
    lines.append(f"query id {answer.query_id}, dataset version {answer.dataset_version}")
    return "\n".join(lines)


def answer_json(answer: Answer) -> str:
    doc = {
        "query_id": answer.query_id,
        "node_id": answer.node_id,
        "query": json.loads(answer.canonical_query),
        "group_by": list(answer.group_by),
        "cells": [
            {
                "group": dict(zip(answer.group_by, cell.group, strict=True)),
                **({"bin": cell.bin} if cell.bin else {}),
                "estimate": cell.value,
                "accuracy_95": cell.accuracy_95,
                "components": [
                    {
                        "name": c.name,
                        "value": c.value,
                        "distribution": c.distribution,
                        "scale": c.scale,
                        "accuracy_95": c.accuracy_95,
                    }
                    for c in cell.components
                ],
            }
            for cell in answer.cells
        ],
        "charged": {answer.charged.definition.symbol: format_amount(answer.charged.amount)},
        "replayed": answer.replayed,
        "dataset_version": answer.dataset_version,
        "remaining": format_amount(answer.budget.available) if answer.budget else None,
    }
    return json.dumps(doc, indent=2)
