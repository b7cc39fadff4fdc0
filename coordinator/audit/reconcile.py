"""Reconciliation: does the coordinator's mirror agree with each node's ledger, charge by charge?

The node's ledger is the authority on what was spent on its data; the
coordinator's ledger records what it asked and what each node replied. A
coordinator's node names are matched to node exports by the node id each node
reported (``outcome.node_id`` equal to the node export's subject), or else by
the name itself.

For every node charge to one of the coordinator's identities there must be a
question with the same query id and the same canonical query, sent to that
node, whose *first* reported charge from that node equals the node's charge
exactly (later replies are replays and charge nothing). For every charge the
coordinator recorded there must be the same charge in the node's ledger.
Mismatches are named by which side shows less or more. The two ledgers alone
cannot say which side is wrong when amounts differ, so the message names both
readings:

- *coordinator under-reports (or the node over-reports)*: the node charged
  more than the coordinator recorded, or charged for an outcome the
  coordinator recorded as a refusal or a skip;
- *node over-reports*: the node charged for a question the coordinator never
  asked it (no such question, a different query under that id, or not sent to
  this node);
- *node under-reports (or the coordinator over-reports)*: the coordinator
  recorded a charge (as the node replied) that the node's ledger lacks or
  records as smaller.

A finding about a node's charge names the node's entry (and the coordinator's
in its message); one about a charge only the coordinator recorded names the
coordinator's entry.

Not failures: charges by other identities (listed as information), questions
sent to a node whose export was not given, and charges whose outcome the
coordinator never learned (it crashed or lost the reply; re-asking with the
same query id replays the answer and reconciles), or that one export was taken
before the other saw them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from coordinator.audit.findings import Finding, error, info, warning
from coordinator.audit.ledgers import ParsedLedger, Placed, parse_time
from coordinator.results import NodeStatus
from tiaki.budget import display_amount, format_amount
from tiaki.ledger_records import ChargeRecord, OutcomeRecord, QuestionRecord

# Outcomes that leave open whether the node charged: the reply never arrived.
UNKNOWN_STATUSES = frozenset(
    s.value for s in (NodeStatus.PENDING, NodeStatus.UNREACHABLE, NodeStatus.ERROR)
)


@dataclass
class _Coordinator:
    """One coordinator ledger indexed for matching."""

    ledger: ParsedLedger
    questions: dict[str, Placed[QuestionRecord]] = field(default_factory=dict)
    asked: dict[str, dict[str, int]] = field(default_factory=dict)  # qid -> node -> entry
    outcomes: dict[tuple[str, str], list[Placed[OutcomeRecord]]] = field(default_factory=dict)
    node_ids: dict[str, str] = field(default_factory=dict)  # node name -> reported node id

    @classmethod
    def index(cls, ledger: ParsedLedger) -> _Coordinator:
        self = cls(ledger)
        for q in ledger.questions:
            self.questions.setdefault(q.record.query_id, q)
            for node in q.record.nodes:
                self.asked.setdefault(q.record.query_id, {}).setdefault(node, q.seq)
        for o in ledger.outcomes:
            self.outcomes.setdefault((o.record.query_id, o.record.node), []).append(o)
            if o.record.node_id:
                self.node_ids.setdefault(o.record.node, o.record.node_id)
        return self

    @property
    def identities(self) -> set[str]:
        return {q.record.identity for q in self.questions.values()}

    def node_names(self) -> list[str]:
        names = {n for nodes in self.asked.values() for n in nodes}
        names |= {node for _, node in self.outcomes}
        return sorted(names)


def _amount(value: Fraction) -> str:
    return format_amount(value)


def _first_charge(outcomes: list[Placed[OutcomeRecord]]) -> Placed[OutcomeRecord] | None:
    return next((o for o in outcomes if o.record.charge is not None), None)


def _later(at: str, exported_at: str) -> bool:
    """Whether an entry time is after an export was taken (so that export cannot hold it)."""
    when, then = parse_time(at), parse_time(exported_at)
    return when is not None and then is not None and when > then


def _match_charge(
    k: _Coordinator, node: ParsedLedger, names: list[str], placed: Placed[ChargeRecord]
) -> list[Finding]:
    charge = placed.record
    what = f"query {charge.query_id!r:.60} charged {_amount(charge.charge)} by the node"
    question = k.questions.get(charge.query_id)
    if question is None or question.record.identity != charge.identity:
        if _later(placed.at, k.ledger.export.exported_at) or not k.ledger.history_complete:
            return [
                warning(
                    node.name,
                    placed.seq,
                    "charge-not-in-coordinator-export",
                    f"{what} is not in the coordinator's export {k.ledger.name} (taken before "
                    "it, or starting after its question); export the coordinator's ledger "
                    "again to reconcile it",
                )
            ]
        return [
            error(
                node.name,
                placed.seq,
                "node-over-reports",
                f"node over-reports: it charged {_amount(charge.charge)} to "
                f"{charge.identity!r:.60} for query {charge.query_id!r:.60}, which the "
                f"coordinator's ledger ({k.ledger.name}) never asked",
            )
        ]
    q = question.record
    if q.canonical_query != charge.canonical_query:
        return [
            error(
                node.name,
                placed.seq,
                "node-over-reports",
                f"node over-reports: it charged {_amount(charge.charge)} for query id "
                f"{charge.query_id!r:.60} but for a different query than the coordinator asked "
                f"under that id ({k.ledger.name} entry {question.seq})",
            )
        ]
    sent = [n for n in names if n in k.asked.get(charge.query_id, {})]
    if not sent:
        return [
            error(
                node.name,
                placed.seq,
                "node-over-reports",
                f"node over-reports: it charged {_amount(charge.charge)} for query "
                f"{charge.query_id!r:.60}, but the coordinator's question ({k.ledger.name} entry "
                f"{question.seq}) was not sent to this node",
            )
        ]
    outcomes = k.outcomes.get((charge.query_id, sent[0]), [])
    first = _first_charge(outcomes)
    node_said = f"the node's ledger charged {_amount(charge.charge)} for query "
    node_said += f"{charge.query_id!r:.60}"
    if first is None:
        last = outcomes[-1] if outcomes else None
        status = last.record.status if last else "pending"
        there = f"{k.ledger.name} entry {last.seq if last else question.seq}"
        if status in UNKNOWN_STATUSES:
            return [
                warning(
                    node.name,
                    placed.seq,
                    "outcome-unknown",
                    f"the coordinator never learned this outcome: {node_said}, while the "
                    f"coordinator has node {sent[0]!r:.60} as '{status}' ({there}); re-asking "
                    "with the same query id replays the answer and reconciles it",
                )
            ]
        return [
            error(
                node.name,
                placed.seq,
                "coordinator-under-reports",
                f"coordinator under-reports (or the node over-reports): {node_said}, but the "
                f"coordinator recorded node {sent[0]!r:.60}'s outcome as {status!r:.30} with "
                f"no charge ({there})",
            )
        ]
    reported = first.record.charge
    assert reported is not None  # _first_charge picks an outcome with a charge
    there = f"{k.ledger.name} entry {first.seq}"
    if reported < charge.charge:
        return [
            error(
                node.name,
                placed.seq,
                "coordinator-under-reports",
                f"coordinator under-reports (or the node over-reports): {node_said}, but the "
                f"coordinator recorded {_amount(reported)} from node {sent[0]!r:.60} ({there})",
            )
        ]
    if reported > charge.charge:
        return [
            error(
                node.name,
                placed.seq,
                "node-under-reports",
                f"node under-reports (or the coordinator over-reports): {node_said}, but the "
                f"coordinator recorded {_amount(reported)} from node {sent[0]!r:.60} ({there})",
            )
        ]
    return []


def _match_outcomes(k: _Coordinator, node: ParsedLedger, names: list[str]) -> list[Finding]:
    """Every charge the coordinator recorded from this node must be in the node's ledger."""
    findings: list[Finding] = []
    charged = {(c.record.identity, c.record.query_id) for c in node.charges}
    for (query_id, name), outcomes in sorted(k.outcomes.items()):
        first = _first_charge(outcomes)
        question = k.questions.get(query_id)
        if name not in names or first is None or first.record.charge is None or question is None:
            continue
        if (question.record.identity, query_id) in charged:
            continue  # compared amount by amount from the node's side
        what = (
            f"the coordinator recorded a charge of {_amount(first.record.charge)} from node "
            f"{name!r:.60} for query {query_id!r:.60}"
        )
        if _later(first.at, node.export.exported_at) or not node.history_complete:
            findings.append(
                warning(
                    k.ledger.name,
                    first.seq,
                    "charge-not-in-node-export",
                    f"{what}, which the node's export {node.name} does not cover (taken "
                    "earlier, or starting after it); export the node's ledger again",
                )
            )
            continue
        findings.append(
            error(
                k.ledger.name,
                first.seq,
                "node-under-reports",
                f"node under-reports (or the coordinator over-reports): {what}, but the node's "
                f"ledger ({node.name}) has no such charge",
            )
        )
    return findings


def _node_for(name: str, k: _Coordinator, nodes: Sequence[ParsedLedger]) -> ParsedLedger | None:
    by_subject = {n.export.subject: n for n in reversed(nodes)}
    node_id = k.node_ids.get(name)
    if node_id and node_id in by_subject:
        return by_subject[node_id]
    return by_subject.get(name)


def reconcile(coordinators: Sequence[ParsedLedger], nodes: Sequence[ParsedLedger]) -> list[Finding]:
    """Match each coordinator ledger with the node ledgers (see the module docs)."""
    if not coordinators:
        return []
    findings: list[Finding] = []
    identities: set[str] = set()
    for ledger in coordinators:
        k = _Coordinator.index(ledger)
        identities |= k.identities
        names_for: dict[str, list[str]] = {}
        for name in k.node_names():
            node = _node_for(name, k, nodes)
            if node is not None:
                names_for.setdefault(node.name, []).append(name)
                continue
            asked = [seq for qid, sent in k.asked.items() for n, seq in sent.items() if n == name]
            node_id = k.node_ids.get(name)
            findings.append(
                warning(
                    ledger.name,
                    min(asked) if asked else None,
                    "node-not-given",
                    f"{len(asked)} question(s) were sent to node {name!r:.60}"
                    + (f" (node id {node_id!r:.60})" if node_id else "")
                    + ", but no export of its ledger was given; they were not reconciled",
                )
            )
        for node in nodes:
            names = names_for.get(node.name, [])
            for placed in node.charges:
                if placed.record.identity in k.identities:
                    findings.extend(_match_charge(k, node, names, placed))
            findings.extend(_match_outcomes(k, node, names))
    for node in nodes:
        others: dict[str, list[Placed[ChargeRecord]]] = {}
        for placed in node.charges:
            if placed.record.identity not in identities:
                others.setdefault(placed.record.identity, []).append(placed)
        for identity, charges in sorted(others.items()):
            total = sum((c.record.charge for c in charges), Fraction(0))
            findings.append(
                info(
                    node.name,
                    None,
                    "other-identity",
                    # An informational total, for reading: rounded (the entries are exact).
                    f"{len(charges)} charge(s) totalling about {display_amount(total)} by "
                    f"{identity!r:.60}, "
                    "for whom no coordinator export was given, were not reconciled",
                )
            )
    return findings
