"""Across node ledgers: every member of a secure sum recorded the same session.

Each node records, in the charge for its input, the session it took part in:
its id, the hash of its roster and its parameters (N, threshold, colluders,
h, γ and σᵢ per component, τ). The protocol makes every member check these
against the same signed session digest, so two members' records of one
session id can differ only if a coordinator showed different members
different sessions under one id, or a ledger was written by something other
than a node. Either is an error: ``secure-session-mismatch`` names the
ledgers and what differs. The query each member paid for (its canonical text
and cost) must agree too, and every member must have paid under the same
query id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.audit.findings import Finding, error
from coordinator.audit.ledgers import ParsedLedger, Placed
from tiaki.ledger_records import ChargeRecord


def _terms(record: ChargeRecord) -> dict[str, Any]:
    session = record.secure_session
    assert session is not None
    return {
        "roster hash": session.roster_hash,
        "members": session.size,
        "threshold": session.threshold,
        "colluders": session.colluders,
        "honest shares": session.honest,
        "scale factors": session.scale_factors,
        "share scales": session.share_scales,
        "query id": record.query_id,
        "query": record.canonical_query,
        "cost": record.requested,
    }


def check_sessions(nodes: Sequence[ParsedLedger]) -> list[Finding]:
    """``secure-session-mismatch`` for each member whose record of a session differs."""
    by_session: dict[str, list[tuple[ParsedLedger, Placed[ChargeRecord]]]] = {}
    for ledger in nodes:
        for placed in ledger.charges:
            if placed.record.secure_session is not None and ledger.own(placed):
                by_session.setdefault(placed.record.secure_session.session_id, []).append(
                    (ledger, placed)
                )
    findings = []
    for session_id, members in by_session.items():
        first_ledger, first = members[0]
        reference = _terms(first.record)
        for ledger, placed in members[1:]:
            terms = _terms(placed.record)
            differ = [key for key in reference if terms[key] != reference[key]]
            if differ:
                findings.append(
                    error(
                        ledger.name,
                        placed.seq,
                        "secure-session-mismatch",
                        f"secure sum {session_id[:16]}… is recorded here with another "
                        f"{', '.join(differ)} than in {first_ledger.name} (entry {first.seq}): "
                        "its members were not shown one session",
                    )
                )
    return findings
