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

Each member also chains what it revealed to unmask the sum (a
``secure_reveal`` entry: the survivor list it signed, and the members whose
self-mask shares and whose mask-key shares it revealed). Across the members'
ledgers no member may appear in both lists (``secure-reveal-both``: its input
could have been unmasked), every reveal must name the same survivors
(``secure-survivors-differ``), and a node reveals only in a session it sent
its input to (``secure-reveal-without-input``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coordinator.audit.findings import Finding, error
from coordinator.audit.ledgers import ParsedLedger, Placed
from tiaki.ledger_records import ChargeRecord, SecureRevealRecord


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
    """Every cross-ledger check of secure sums (see the module docs)."""
    return _check_charges(nodes) + _check_reveals(nodes)


def _check_reveals(nodes: Sequence[ParsedLedger]) -> list[Finding]:
    findings = []
    by_session: dict[str, list[tuple[ParsedLedger, Placed[SecureRevealRecord]]]] = {}
    for ledger in nodes:
        charged = {
            c.record.secure_session.session_id
            for c in ledger.charges
            if c.record.secure_session is not None
        }
        for placed in ledger.of(SecureRevealRecord):
            if not ledger.own(placed):
                continue
            session_id = placed.record.session_id
            by_session.setdefault(session_id, []).append((ledger, placed))
            if ledger.history_complete and session_id not in charged:
                findings.append(
                    error(
                        ledger.name,
                        placed.seq,
                        "secure-reveal-without-input",
                        f"this node revealed shares in secure sum {session_id[:16]}… but its "
                        "ledger has no charge for an input to it",
                    )
                )
    for session_id, reveals in by_session.items():
        first_ledger, first = reveals[0]
        for ledger, placed in reveals[1:]:
            if placed.record.survivors != first.record.survivors:
                findings.append(
                    error(
                        ledger.name,
                        placed.seq,
                        "secure-survivors-differ",
                        f"secure sum {session_id[:16]}… was unmasked here for survivors "
                        f"{list(placed.record.survivors)} but in {first_ledger.name} for "
                        f"{list(first.record.survivors)}",
                    )
                )
        self_masks = {m for _, p in reveals for m in p.record.self_mask_shares}
        for ledger, placed in reveals:
            both = sorted(set(placed.record.mask_key_shares) & self_masks)
            if both:
                findings.append(
                    error(
                        ledger.name,
                        placed.seq,
                        "secure-reveal-both",
                        f"in secure sum {session_id[:16]}… member(s) "
                        f"{', '.join(map(str, both))} had mask-key shares revealed here and "
                        "self-mask shares revealed by a member: their input could be unmasked",
                    )
                )
    return findings


def _check_charges(nodes: Sequence[ParsedLedger]) -> list[Finding]:
    """``secure-session-mismatch`` for each member whose record of a session differs."""
    by_session: dict[str, list[tuple[ParsedLedger, Placed[ChargeRecord]]]] = {}
    for ledger in nodes:
        for placed in ledger.charges:
            if placed.record.secure_session is not None and ledger.own(placed):
                by_session.setdefault(placed.record.secure_session.session_id, []).append(
                    (ledger, placed)
                )
    findings: list[Finding] = []
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
