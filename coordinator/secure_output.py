"""How a secure answer was made, in the words of the table and the fields of the JSON."""

from __future__ import annotations

import math
from typing import Any

from coordinator.results import FederatedAnswer, SecureSummary
from tiaki.budget import display_amount, format_amount


def secure_lines(answer: FederatedAnswer) -> list[str]:
    """How a secure answer was made, in words: the session, the noise, each node's charges."""
    secure = answer.secure
    if secure is None:
        return []
    lines = [
        f"asked as a secure sum (session {secure.session_id}): {secure.size} members, "
        f"{secure.threshold} inputs needed, assuming up to {secure.colluders} colluding with "
        f"the coordinator, so at least {secure.honest} honest noise shares in any total; no "
        "node's own answer was seen by anyone.",
    ]
    if secure.summed:
        lines.append(
            f"{secure.summed} inputs summed, with one noise: its standard deviation is "
            f"{secure.error_ratio:.2f}× that of one central release of the pooled data."
        )
    symbol = answer.query.cost.definition.symbol
    if secure.charges:
        parts = [
            f"{node} {symbol} {display_amount(agg)} (worst case {display_amount(worst)})"
            for node, (agg, worst) in secure.charges.items()
        ]
        lines.append(
            "guarantee per node, aggregate if the secure sum holds, and worst case (its share "
            "alone): " + ", ".join(parts)
        )
    return lines


def secure_doc(s: SecureSummary) -> dict[str, Any]:
    """The ``secure`` object of the JSON document (amounts as exact decimal text)."""
    return {
        "session_id": s.session_id,
        "members": s.size,
        "threshold": s.threshold,
        "colluders": s.colluders,
        "honest": s.honest,
        "summed": s.summed,
        "error_ratio": s.error_ratio if math.isfinite(s.error_ratio) else None,
        "charges": {
            node: {"aggregate": format_amount(agg), "worst_case": format_amount(worst)}
            for node, (agg, worst) in s.charges.items()
        },
        "stopped": s.stopped or None,
    }
