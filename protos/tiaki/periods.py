"""Budget periods: one calendar arithmetic for the node that charges and the audit that checks.

A policy's period kind is "yearly", "quarterly", "monthly" or "none"; a
period is named by a label ("2026", "2026-Q4", "2026-11", "lifetime") and
runs from its start date to its (exclusive) end date, in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

LIFETIME = "lifetime"
# The label shape each period kind gives.
LABEL_SHAPES = {
    "none": re.compile(r"lifetime"),
    "yearly": re.compile(r"\d{4}"),
    "quarterly": re.compile(r"\d{4}-Q[1-4]"),
    "monthly": re.compile(r"\d{4}-(0[1-9]|1[0-2])"),
}


def period_label(kind: str, when: datetime) -> str:
    """The period of kind ``kind`` containing ``when`` (UTC; naive means UTC)."""
    day = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if kind == "yearly":
        return f"{day.year}"
    if kind == "quarterly":
        return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    if kind == "monthly":
        return f"{day.year}-{day.month:02d}"
    return LIFETIME


def period_dates(label: str) -> tuple[str, str] | None:
    """ISO start and (exclusive) end dates a label implies; ("", "") for the lifetime;
    None for a label of no known shape (from an untrusted export, say)."""
    if label == LIFETIME:
        return "", ""
    if not any(shape.fullmatch(label) for shape in LABEL_SHAPES.values()):
        return None
    year, _, rest = label.partition("-")
    y = int(year)
    if not rest:
        return date(y, 1, 1).isoformat(), date(y + 1, 1, 1).isoformat()
    months = 3 if rest.startswith("Q") else 1
    first = (int(rest[1:]) - 1) * 3 + 1 if rest.startswith("Q") else int(rest)
    after = first - 1 + months  # months from January to the end, 0-based
    return date(y, first, 1).isoformat(), date(y + after // 12, after % 12 + 1, 1).isoformat()


def period_bounds(label: str) -> tuple[str, str]:
    """:func:`period_dates` of a label this process made itself (ValueError otherwise)."""
    dates = period_dates(label)
    if dates is None:
        raise ValueError(f"{label!r} is not a budget period label")
    return dates
