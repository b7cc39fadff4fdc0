"""Mistakes caught before any node is asked: the question against the nodes' public schemas.

Every node publishes its schema and policy summary (``GetInfo``: public
metadata, no record behind it). A question that *no* node could answer (a
misspelt column or category, a kind no node allows, bounds outside every
node's declared range) is refused here, with a suggestion, before anything is
sent or spent. Where nodes differ, a question that suits at least one node is
let through, and the others refuse it themselves.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from tiaki.errors import InvalidQueryError
from tiaki.node_info import ColumnInfo, NodeInfo
from tiaki.query import InSet, Query


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'region'?" for the closest of ``choices``, or "" if none is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _columns(infos: Iterable[NodeInfo]) -> dict[str, list[ColumnInfo]]:
    by_name: dict[str, list[ColumnInfo]] = {}
    for info in infos:
        for column in info.columns:
            by_name.setdefault(column.name, []).append(column)
    return by_name


def _where(infos: Mapping[str, NodeInfo]) -> str:
    names = sorted(infos)
    return "any node" if len(names) != 1 else f"node {names[0]}"


def check_against_schemas(query: Query, infos: Mapping[str, NodeInfo]) -> None:
    """Raise :class:`InvalidQueryError` if no node in ``infos`` could answer ``query``."""
    if not infos:
        return
    where = _where(infos)
    columns = _columns(infos.values())
    allowed = {k for info in infos.values() for k in info.allowed_kinds}
    if query.kind not in allowed:
        kinds = ", ".join(sorted(k.value for k in allowed)) or "none"
        raise InvalidQueryError(
            f"{query.kind.value} questions are not allowed by {where} (allowed: {kinds})"
        )
    named = [*query.group_by]
    named += [f.column for f in (*query.filters, *query.condition)]
    if query.column:
        named.append(query.column)
    for name in named:
        if name not in columns:
            raise InvalidQueryError(
                f"no column {name!r} at {where}{did_you_mean(name, columns)} (columns: "
                f"{', '.join(sorted(columns))})"
            )
    for name in query.group_by:
        if not any(c.type == "categorical" for c in columns[name]):
            raise InvalidQueryError(
                f"{name!r} is not categorical at {where}; group by a categorical column"
            )
    for flt in (*query.filters, *query.condition):
        if isinstance(flt, InSet):
            known = {cat for c in columns[flt.column] for cat in c.categories}
            for value in flt.values:
                if value not in known:
                    raise InvalidQueryError(
                        f"{flt.column!r} has no category {value!r} at {where}"
                        f"{did_you_mean(value, known)} (categories: {', '.join(sorted(known))})"
                    )
    if query.bounds is not None and query.column:
        declared = [c.bounds for c in columns[query.column] if c.bounds is not None]
        fits = [b for b in declared if b[0] <= query.bounds.lower and query.bounds.upper <= b[1]]
        if declared and not fits:
            ranges = ", ".join(f"[{lower:g}, {upper:g}]" for lower, upper in declared)
            raise InvalidQueryError(
                f"bounds [{query.bounds.lower:g}, {query.bounds.upper:g}] reach outside "
                f"{query.column!r} as declared at {where} ({ranges}); bounds may only narrow them"
            )
