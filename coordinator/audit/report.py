"""``tiaki audit report``: what was spent, per node and period, identity, query kind and analyst.

Totals are computed from the entries of each ledger at hand (with the entries
an earlier export supplied before a partial one), exactly, as Fractions; the
limits and caps are those of the policy in force at the last entry. The JSON
document writes every amount as exact decimal text; tables round for reading.
Every report carries the verification verdict: a total is only as good as the
ledger it was summed from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tabulate import tabulate

from coordinator.audit.findings import Finding
from coordinator.audit.ledgers import ParsedLedger, Placed
from coordinator.audit.verify import Verification
from tiaki.budget import PrivacyDefinition, display_amount, format_amount
from tiaki.ledger_records import ChargeRecord, PeriodRecord, PolicyRecord

REPORT_FORMAT = "tiaki-audit-report"
REPORT_VERSION = 1
ZERO = Fraction(0)
# What amounts are measured in, by privacy definition: the letter readers know
# from the papers (a budget of 1 means very different things in the two).
UNITS = {d.value: d.letter for d in PrivacyDefinition}


def amount_unit(definition: str) -> str:
    """``ε`` for pure DP, ``ρ`` for zCDP, ``""`` for a definition tiaki does not know."""
    return UNITS.get(definition, "")


@dataclass(frozen=True)
class Share:
    """Queries and spending attributed to one name (identity, kind, analyst or node)."""

    name: str
    queries: int
    spent: Fraction


@dataclass(frozen=True)
class PeriodTotal:
    period: str
    queries: int
    spent: Fraction
    limit: Fraction | None
    remaining: Fraction | None


@dataclass(frozen=True)
class IdentityTotal:
    identity: str
    period: str
    queries: int
    spent: Fraction
    cap: Fraction | None
    remaining: Fraction | None


@dataclass(frozen=True)
class SecureTotals:
    """A node's secure sums: the aggregate charged (in ``spent`` too) beside the worst case."""

    sessions: int
    aggregate: Fraction  # what the budget was charged for them
    guarantee: Fraction  # OpenDP's map of the honest shares' sum plus τ, as recorded
    worst_case: Fraction
    worst_case_lifetime: Fraction | None  # the cap of the policy in force last

    @property
    def worst_case_remaining(self) -> Fraction | None:
        if self.worst_case_lifetime is None:
            return None
        return max(ZERO, self.worst_case_lifetime - self.worst_case)


@dataclass(frozen=True)
class NodeReport:
    """One node's ledger totalled."""

    export: str
    subject: str
    ledger_id: str
    definition: str
    from_seq: int  # first entry summed (1 when the whole history was at hand)
    to_seq: int
    spent: Fraction
    lifetime_limit: Fraction | None
    periods: tuple[PeriodTotal, ...]
    identities: tuple[IdentityTotal, ...]
    kinds: tuple[Share, ...]
    analysts: tuple[Share, ...]
    charges: tuple[Placed[ChargeRecord], ...]
    # Every policy and period roll-over at hand, oldest first: the plot draws a
    # limit as it was when each charge was made, and resets a period's spending
    # where that period began.
    policies: tuple[Placed[PolicyRecord], ...] = ()
    period_starts: tuple[Placed[PeriodRecord], ...] = ()
    secure: SecureTotals | None = None  # None: the node never charged for a secure sum

    @property
    def queries(self) -> int:
        return len(self.charges)

    @property
    def unit(self) -> str:
        return amount_unit(self.definition)

    @property
    def lifetime_remaining(self) -> Fraction | None:
        if self.lifetime_limit is None:
            return None
        return max(ZERO, self.lifetime_limit - self.spent)


@dataclass(frozen=True)
class NodeOutcomes:
    """What a coordinator recorded for one node: questions asked, answered, charges reported."""

    node: str
    node_id: str
    asked: int
    answered: int
    charged: Fraction


@dataclass(frozen=True)
class CoordinatorReport:
    """One coordinator's ledger totalled."""

    export: str
    subject: str
    ledger_id: str
    questions: int
    outcomes: tuple[tuple[str, int], ...]  # final status of each (question, node) -> count
    nodes: tuple[NodeOutcomes, ...]
    analysts: tuple[Share, ...]


@dataclass(frozen=True)
class AuditReport:
    verification: Verification
    nodes: tuple[NodeReport, ...]
    coordinators: tuple[CoordinatorReport, ...]


def _shares(pairs: Iterable[tuple[str, Fraction]]) -> tuple[Share, ...]:
    counts: dict[str, int] = {}
    sums: dict[str, Fraction] = {}
    for name, amount in pairs:
        counts[name] = counts.get(name, 0) + 1
        sums[name] = sums.get(name, ZERO) + amount
    return tuple(Share(n, counts[n], sums[n]) for n in sorted(counts))


def node_report(ledger: ParsedLedger) -> NodeReport:
    """Total one node ledger's charges (see the module docs)."""
    charges = tuple(ledger.charges)
    policies = ledger.of(PolicyRecord)
    policy = policies[-1].record if policies else None
    period_queries: dict[str, int] = {}
    period_spent: dict[str, Fraction] = {}
    for c in charges:
        label = c.record.period
        period_queries[label] = period_queries.get(label, 0) + 1
        period_spent[label] = period_spent.get(label, ZERO) + c.record.charge
    labels = list(dict.fromkeys([p.record.period for p in ledger.periods] + list(period_spent)))
    periods = []
    for label in labels:
        spent = period_spent.get(label, ZERO)
        limit = policy.limit if policy else None
        left = None if limit is None else max(ZERO, limit - spent)
        periods.append(PeriodTotal(label, period_queries.get(label, 0), spent, limit, left))
    identities = []
    for share in _shares(
        (f"{c.record.identity}\n{c.record.period}", c.record.charge) for c in charges
    ):
        identity, _, label = share.name.partition("\n")
        cap = policy.cap_for(identity) if policy else None
        left = None if cap is None else max(ZERO, cap - share.spent)
        identities.append(IdentityTotal(identity, label, share.queries, share.spent, cap, left))
    export = ledger.export
    return NodeReport(
        export=export.name,
        subject=export.subject,
        ledger_id=export.ledger_id,
        definition=policy.definition if policy else str(export.header.get("definition") or ""),
        from_seq=1 if ledger.history_complete else export.from_seq,
        to_seq=export.to_seq,
        spent=sum((c.record.charge for c in charges), ZERO),
        lifetime_limit=policy.lifetime_limit if policy else None,
        periods=tuple(periods),
        identities=tuple(identities),
        kinds=_shares((c.record.kind, c.record.charge) for c in charges),
        analysts=_shares((c.record.analyst, c.record.charge) for c in charges),
        charges=charges,
        policies=tuple(policies),
        period_starts=tuple(ledger.periods),
        secure=_secure_totals(charges, policy),
    )


def _secure_totals(
    charges: Sequence[Placed[ChargeRecord]], policy: PolicyRecord | None
) -> SecureTotals | None:
    secure = [c.record for c in charges if c.record.worst_case is not None]
    if not secure:
        return None
    rules = policy.secure_aggregation if policy is not None else None
    return SecureTotals(
        sessions=len(secure),
        aggregate=sum((r.charge for r in secure), ZERO),
        guarantee=sum((r.privacy_map or ZERO for r in secure), ZERO),
        worst_case=sum((r.worst_case or ZERO for r in secure), ZERO),
        worst_case_lifetime=rules.worst_case_lifetime if rules is not None else None,
    )


def coordinator_report(ledger: ParsedLedger) -> CoordinatorReport:
    """Count one coordinator ledger's questions and each node's outcomes."""
    questions = {q.record.query_id: q.record for q in reversed(ledger.questions)}
    asked: dict[tuple[str, str], str] = {}  # (query id, node) -> latest status
    for q in ledger.questions:
        for node in q.record.nodes:
            asked.setdefault((q.record.query_id, node), "pending")
    first_charge: dict[tuple[str, str], Fraction] = {}
    node_ids: dict[str, str] = {}
    for o in ledger.outcomes:
        key = (o.record.query_id, o.record.node)
        asked[key] = o.record.status
        if o.record.charge is not None:
            first_charge.setdefault(key, o.record.charge)
        if o.record.node_id:
            node_ids.setdefault(o.record.node, o.record.node_id)
    statuses: dict[str, int] = {}
    for status in asked.values():
        statuses[status] = statuses.get(status, 0) + 1
    nodes = []
    for node in sorted({n for _, n in asked}):
        keys = [k for k in asked if k[1] == node]
        nodes.append(
            NodeOutcomes(
                node,
                node_ids.get(node, ""),
                len(keys),
                sum(1 for k in keys if k in first_charge),
                sum((first_charge.get(k, ZERO) for k in keys), ZERO),
            )
        )
    export = ledger.export
    return CoordinatorReport(
        export=export.name,
        subject=export.subject,
        ledger_id=export.ledger_id,
        questions=len(questions),
        outcomes=tuple(sorted(statuses.items())),
        nodes=tuple(nodes),
        analysts=_shares((q.analyst, ZERO) for q in questions.values()),
    )


def build_report(verification: Verification) -> AuditReport:
    latest = verification.latest
    return AuditReport(
        verification,
        tuple(node_report(g) for g in latest if g.is_node),
        tuple(coordinator_report(g) for g in latest if not g.is_node),
    )


# ---------------------------------------------------------------- JSON


def _opt(value: Fraction | None) -> str | None:
    return None if value is None else format_amount(value)


def _share_docs(shares: Iterable[Share], key: str) -> list[dict[str, Any]]:
    return [{key: s.name, "queries": s.queries, "spent": format_amount(s.spent)} for s in shares]


def node_doc(node: NodeReport) -> dict[str, Any]:
    return {
        "export": node.export,
        "subject": node.subject,
        "ledger_id": node.ledger_id,
        "definition": node.definition,
        "entries": {"from_seq": node.from_seq, "to_seq": node.to_seq},
        "queries": node.queries,
        "spent": format_amount(node.spent),
        "lifetime_limit": _opt(node.lifetime_limit),
        "lifetime_remaining": _opt(node.lifetime_remaining),
        "secure_sums": None
        if node.secure is None
        else {
            "sessions": node.secure.sessions,
            "charged": format_amount(node.secure.aggregate),
            "aggregate_guarantee": format_amount(node.secure.guarantee),
            "worst_case": format_amount(node.secure.worst_case),
            "worst_case_lifetime": _opt(node.secure.worst_case_lifetime),
            "worst_case_remaining": _opt(node.secure.worst_case_remaining),
        },
        "periods": [
            {
                "period": p.period,
                "queries": p.queries,
                "spent": format_amount(p.spent),
                "limit": _opt(p.limit),
                "remaining": _opt(p.remaining),
            }
            for p in node.periods
        ],
        "identities": [
            {
                "identity": i.identity,
                "period": i.period,
                "queries": i.queries,
                "spent": format_amount(i.spent),
                "cap": _opt(i.cap),
                "remaining": _opt(i.remaining),
            }
            for i in node.identities
        ],
        "kinds": _share_docs(node.kinds, "kind"),
        "analysts": _share_docs(node.analysts, "analyst"),
        "charges": [
            {
                "seq": c.seq,
                "at": c.at,
                "query_id": c.record.query_id,
                "identity": c.record.identity,
                "analyst": c.record.analyst,
                "kind": c.record.kind,
                "period": c.record.period,
                "requested": format_amount(c.record.requested),
                "charge": format_amount(c.record.charge),
            }
            for c in node.charges
        ],
    }


def coordinator_doc(coordinator: CoordinatorReport) -> dict[str, Any]:
    return {
        "export": coordinator.export,
        "subject": coordinator.subject,
        "ledger_id": coordinator.ledger_id,
        "questions": coordinator.questions,
        "outcomes": dict(coordinator.outcomes),
        "nodes": [
            {
                "node": n.node,
                "node_id": n.node_id,
                "asked": n.asked,
                "answered": n.answered,
                "charged": format_amount(n.charged),
            }
            for n in coordinator.nodes
        ],
        "analysts": [{"analyst": s.name, "questions": s.queries} for s in coordinator.analysts],
    }


def report_json(report: AuditReport) -> str:
    """The report as a stable JSON document (amounts as exact decimal text)."""
    doc = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "verification": report.verification.doc(),
        "nodes": [node_doc(n) for n in report.nodes],
        "coordinators": [coordinator_doc(c) for c in report.coordinators],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- tables


def printable(text: str) -> str:
    """Text from an export made safe for a terminal: control characters (which could
    move the cursor or recolour the screen) are shown as escapes instead."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(value: Fraction | None) -> str:
    return "-" if value is None else display_amount(value)


def findings_table(findings: Iterable[Finding]) -> str:
    rows = [
        [
            f.severity.value,
            printable(f.export) or "-",
            "-" if f.seq is None else f.seq,
            printable(f.message),
        ]
        for f in findings
    ]
    return tabulate(
        rows, headers=["severity", "export", "entry", "finding"], maxcolwidths=[None, 40, None, 80]
    )


def _node_tables(node: NodeReport) -> list[str]:
    title = (
        f"node {node.subject} ({node.export}, entries {node.from_seq}-{node.to_seq}): "
        f"{node.queries} queries, {display_amount(node.spent)} spent"
    )
    if node.lifetime_limit is not None:
        title += f" of lifetime limit {display_amount(node.lifetime_limit)}"
    periods = [
        [p.period, p.queries, _shown(p.spent), _shown(p.limit), _shown(p.remaining)]
        for p in node.periods
    ]
    idents = [
        [i.identity, i.period, i.queries, _shown(i.spent), _shown(i.cap), _shown(i.remaining)]
        for i in node.identities
    ]
    secure = []
    if node.secure is not None:
        s = node.secure
        secure = [
            _table(
                [
                    [
                        s.sessions,
                        _shown(s.aggregate),
                        _shown(s.guarantee),
                        _shown(s.worst_case),
                        _shown(s.worst_case_lifetime),
                        _shown(s.worst_case_remaining),
                    ]
                ],
                headers=[
                    "secure sums",
                    "charged (aggregate)",
                    "aggregate guarantee",
                    "worst case",
                    "worst-case cap",
                    "worst case left",
                ],
            )
        ]
    return [
        printable(title),
        *secure,
        _table(periods, headers=["period", "queries", "spent", "limit", "remaining"]),
        _table(idents, headers=["identity", "period", "queries", "spent", "cap", "remaining"]),
        _table(
            [[s.name, s.queries, _shown(s.spent)] for s in node.kinds],
            headers=["kind", "queries", "spent"],
        ),
        _table(
            [[s.name, s.queries, _shown(s.spent)] for s in node.analysts],
            headers=["analyst", "queries", "spent"],
        ),
    ]


def _coordinator_tables(c: CoordinatorReport) -> list[str]:
    outcomes = ", ".join(f"{status} {count}" for status, count in c.outcomes) or "none"
    return [
        printable(
            f"coordinator {c.subject} ({c.export}): {c.questions} questions; outcomes: {outcomes}"
        ),
        _table(
            [[n.node, n.node_id or "-", n.asked, n.answered, _shown(n.charged)] for n in c.nodes],
            headers=["node", "node id", "asked", "answered", "charges reported"],
        ),
        _table([[s.name, s.queries] for s in c.analysts], headers=["analyst", "questions"]),
    ]


def report_table(report: AuditReport) -> str:
    """The report for people: the verdict first, then each ledger's totals."""
    parts = [report.verification.verdict()]
    if report.verification.findings:
        parts.append(findings_table(report.verification.findings))
    for node in report.nodes:
        parts.extend(_node_tables(node))
    for coordinator in report.coordinators:
        parts.extend(_coordinator_tables(coordinator))
    return "\n\n".join(parts) + "\n"


def _table(rows: Iterable[Iterable[object]], headers: list[str]) -> str:
    """A table whose text cells (from an untrusted export) are made printable first."""
    clean = [[printable(c) if isinstance(c, str) else c for c in row] for row in rows]
    return tabulate(clean, headers=headers)
