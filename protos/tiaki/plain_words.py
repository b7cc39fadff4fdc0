"""A query in plain words, for the people whose data it was asked of.

Ledgers store the canonical JSON of each query (:meth:`tiaki.query.Query.canonical`);
NGO staff and evaluators read it as a sentence. The text comes from a ledger
or an export, so it is treated as untrusted: anything unexpected falls back to
a shortened copy of the raw text rather than failing.
"""

from __future__ import annotations

import json
from typing import Any

_KINDS = {
    "count": "number of service records",
    "count_clients": "number of clients",
    "sum": "total {column}",
    "mean": "average {column}",
    "proportion": "share of clients with {condition}",
    "histogram": "number of records in each {column} band",
}


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _condition(item: Any) -> str:
    if not isinstance(item, dict):
        raise ValueError("a filter is not an object")
    column = str(item["column"])
    if "in" in item:
        values = [str(v) for v in item["in"]]
        return f"{column} is {' or '.join(values)}"
    if "from" in item or "to" in item:
        low, high = item.get("from"), item.get("to")
        if low and high:
            return f"{column} from {low} to {high}"
        return f"{column} from {low}" if low else f"{column} up to {high}"
    low, high = item.get("min"), item.get("max")
    if low is not None and high is not None:
        return f"{column} from {_number(low)} to {_number(high)}"
    return (
        f"{column} at least {_number(low)}"
        if low is not None
        else f"{column} at most {_number(high)}"
    )


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe_query(canonical: str, limit: int = 300) -> str:
    """E.g. "number of clients by region and gender, where age_band is 18-24 or 25-34"."""
    try:
        doc = json.loads(canonical)
        kind = str(doc["kind"])
        condition = [_condition(c) for c in doc.get("condition") or []]
        text = _KINDS[kind].format(
            column=doc.get("column") or "", condition=_and(condition) if condition else "?"
        )
        group_by = [str(g) for g in doc.get("group_by") or []]
        if group_by:
            text += " by " + _and(group_by)
        filters = [_condition(f) for f in doc.get("filters") or []]
        if filters:
            text += ", where " + _and(filters)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
        text = f"query {canonical}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
