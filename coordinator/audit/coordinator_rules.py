"""A coordinator's ledger checked on its own terms: outcomes follow the questions they answer.

Checks, entry by entry:

- every outcome answers a question recorded before it, from a node that
  question was sent to;
- a query id is never reused for a different query;
- outcome statuses are the known ones; answered and replayed outcomes report a
  charge and other outcomes do not;
- later replies for the same (question, node) report the same charge as the
  first (they are replays; the first charge is the one that counts).
"""

from __future__ import annotations

from fractions import Fraction

from coordinator.audit.findings import Finding, error, warning
from coordinator.audit.ledgers import ParsedLedger, Placed
from coordinator.results import NodeStatus
from tiaki.budget import format_amount
from tiaki.ledger_records import OutcomeRecord, QuestionRecord

CHARGING_STATUSES = frozenset({NodeStatus.ANSWERED.value, NodeStatus.REPLAYED.value})
KNOWN_STATUSES = frozenset(status.value for status in NodeStatus)


def _check_outcome(
    placed: Placed[OutcomeRecord],
    question: Placed[QuestionRecord] | None,
    asked: set[str],
    first_charge: dict[tuple[str, str], tuple[int, Fraction]],
    complete: bool,
) -> list[Finding]:
    o, name, seq = placed.record, placed.export, placed.seq
    what = f"node {o.node!r:.60}'s outcome for query {o.query_id!r:.60}"
    findings: list[Finding] = []
    if question is None:
        # In a partial export the question may precede the first entry at hand.
        if complete:
            findings.append(
                error(
                    name, seq, "outcome-without-question", f"{what} answers no question before it"
                )
            )
    elif o.node not in asked:
        findings.append(
            error(
                name,
                seq,
                "outcome-from-unasked-node",
                f"{what}: the question (entry {question.seq}) was not sent to that node",
            )
        )
    if o.status not in KNOWN_STATUSES:
        findings.append(
            warning(name, seq, "unknown-status", f"{what} has an unknown status {o.status!r:.40}")
        )
    elif o.status in CHARGING_STATUSES and o.charge is None:
        findings.append(
            warning(
                name, seq, "answer-without-charge", f"{what} is {o.status} but reports no charge"
            )
        )
    elif o.status not in CHARGING_STATUSES and o.charge is not None:
        findings.append(
            warning(
                name,
                seq,
                "charge-without-answer",
                f"{what} is {o.status} yet reports a charge of {format_amount(o.charge)}",
            )
        )
    if o.charge is not None:
        key = (o.query_id, o.node)
        earlier = first_charge.setdefault(key, (seq, o.charge))
        if earlier[1] != o.charge:
            findings.append(
                warning(
                    name,
                    seq,
                    "charge-changed",
                    f"{what} reports a charge of {format_amount(o.charge)}, but the first "
                    f"reply (entry {earlier[0]}) reported {format_amount(earlier[1])}; the first "
                    "is the one that counts",
                )
            )
    return findings


def check_coordinator_ledger(ledger: ParsedLedger) -> list[Finding]:
    """Every place a coordinator's ledger contradicts itself (see the module docs)."""
    findings: list[Finding] = []
    questions: dict[str, Placed[QuestionRecord]] = {}
    asked: dict[str, set[str]] = {}
    first_charge: dict[tuple[str, str], tuple[int, Fraction]] = {}
    for placed in ledger.entries:
        record = placed.record
        if isinstance(record, QuestionRecord):
            earlier = questions.get(record.query_id)
            if earlier is not None and earlier.record.canonical_query != record.canonical_query:
                findings.append(
                    error(
                        placed.export,
                        placed.seq,
                        "query-id-reused",
                        f"query id {record.query_id!r:.60} was first asked at entry "
                        f"{earlier.seq} for a different query",
                    )
                )
                continue
            if earlier is None:
                questions[record.query_id] = Placed(placed.export, placed.seq, placed.at, record)
            asked.setdefault(record.query_id, set()).update(record.nodes)
        elif isinstance(record, OutcomeRecord):
            findings.extend(
                _check_outcome(
                    Placed(placed.export, placed.seq, placed.at, record),
                    questions.get(record.query_id),
                    asked.get(record.query_id, set()),
                    first_charge,
                    ledger.history_complete,
                )
            )
    return findings
