"""What the mirror ledger's queries return, and its comparison with the nodes' ledgers.

:class:`coordinator.mirror.MirrorLedger` reads its tables in one transaction
and builds these from the rows; :func:`spending_disagreements` compares its
per-node totals with what each node's own ledger reports. Amounts are exact
Fractions (privacy loss in each question's definition, ε or ρ). Nothing here
reads or writes the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

from coordinator.results import NodeStatus
from tiaki.budget import PrivacyDefinition, format_amount, read_amount


@dataclass(frozen=True)
class MirrorOutcome:
    """One node's part in one question. ``charged`` is None until the node reports a charge."""

    node: str
    status: NodeStatus
    reason: str
    charged: Fraction | None
    attempts: int  # total over every fan-out of this question
    seconds: float  # total over every fan-out of this question
    dataset_version: str
    node_id: str  # the id the node reported for itself ("" until it answers)
    updated_at: str

    @property
    def pending(self) -> bool:
        return self.status == NodeStatus.PENDING


@dataclass(frozen=True)
class MirrorQuestion:
    """One question as this coordinator asked it, with every node's outcome."""

    query_id: str
    analyst: str
    identity: str
    canonical_query: str
    requested: Fraction
    definition: PrivacyDefinition
    created_at: str
    outcomes: tuple[MirrorOutcome, ...]

    @property
    def pending_nodes(self) -> tuple[str, ...]:
        return tuple(o.node for o in self.outcomes if o.pending)


@dataclass(frozen=True)
class StoredQuestion:
    """A question as kept for showing again: the request, and each node's answer bytes."""

    query_id: str
    request: bytes | None  # a serialised QueryRequest; None if recorded before schema 3
    require_all: bool
    answers: dict[str, bytes]  # node name -> serialised QueryResponse
    midpoints: dict[str, float]  # node name -> clamping midpoint (means)
    # A secure sum: its session as JSON (its total is among ``answers``); else None.
    secure_session: str | None = None


@dataclass(frozen=True)
class Discrepancy:
    """A node whose own ledger disagrees with this coordinator's mirror."""

    node: str
    mirror_spent: Fraction
    node_spent: Fraction | None  # None: the node gave no figure to compare
    message: str


# Questions oldest first, outcomes in the order asked, as the columns the views'
# fields are named after (the SQL holds field names only).
_QUESTION_COLUMNS = ", ".join(f.name for f in fields(MirrorQuestion) if f.name != "outcomes")
_OUTCOME_COLUMNS = ", ".join(["query_id", *(f.name for f in fields(MirrorOutcome))])
SELECT_QUESTIONS = f"SELECT {_QUESTION_COLUMNS} FROM questions ORDER BY seq"  # noqa: S608
SELECT_OUTCOMES = f"SELECT {_OUTCOME_COLUMNS} FROM outcomes ORDER BY rowid"  # noqa: S608


def questions_from_rows(
    questions: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]]
) -> list[MirrorQuestion]:
    """Questions, in the order of ``questions``, each with its outcomes in the order given.

    ``questions`` are rows of :data:`SELECT_QUESTIONS` and ``outcomes`` rows of
    :data:`SELECT_OUTCOMES`; amounts are read exactly.
    """
    by_question: dict[str, list[MirrorOutcome]] = {}
    for row in outcomes:
        fields_ = {k: v for k, v in row.items() if k != "query_id"}
        charged = row["charged"]
        fields_.update(
            status=NodeStatus(row["status"]),
            charged=None if charged is None else read_amount(charged),
            seconds=float(row["seconds"]),
        )
        by_question.setdefault(row["query_id"], []).append(MirrorOutcome(**fields_))
    return [
        MirrorQuestion(
            **{
                **row,
                "requested": read_amount(row["requested"]),
                "definition": PrivacyDefinition(row["definition"]),
                "outcomes": tuple(by_question.get(row["query_id"], ())),
            }
        )
        for row in questions
    ]


def spending_disagreements(
    mirror: dict[str, Fraction], node_reported: dict[str, Fraction]
) -> list[Discrepancy]:
    """Every node whose own lifetime spending differs from this coordinator's mirror.

    ``mirror`` is :meth:`MirrorLedger.spent_by_node`; ``node_reported`` is each
    node's lifetime spending as its ledger reports it. A node absent from the
    mirror counts as 0 there. A node the mirror charged but that gave no figure
    is flagged too: silence is not agreement. Sorted by node.
    """
    found: list[Discrepancy] = []
    for node in sorted(set(mirror) | set(node_reported)):
        ours = mirror.get(node, Fraction(0))
        theirs = node_reported.get(node)
        if theirs is None:
            if ours:
                found.append(
                    Discrepancy(
                        node,
                        ours,
                        None,
                        f"node {node}: the mirror records {format_amount(ours)} charged but the "
                        "node reported no spending to compare; cannot reconcile",
                    )
                )
            continue
        if theirs == ours:
            continue
        gap = format_amount(abs(theirs - ours))
        if theirs > ours:
            why = (
                "node reports more than this coordinator's mirror: other coordinators "
                "or lost replies"
            )
        else:
            why = (
                "node reports LESS than the mirror: the mirror over-counts or the node's "
                "ledger lost entries — investigate"
            )
        found.append(
            Discrepancy(
                node,
                ours,
                theirs,
                f"node {node}: node reports {format_amount(theirs)}, mirror "
                f"{format_amount(ours)} (difference {gap}); {why}",
            )
        )
    return found
