"""One question to the whole federation: pre-flight, fan-out, mirror ledger, combination."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait

from coordinator.client import new_query_id
from coordinator.combine import UNRELIABLE_SHARE, combine_outcomes, combine_secure
from coordinator.fanout import Federation, Preflight, preflight, start_ask
from coordinator.mirror import SECURE_TOTAL, MirrorLedger
from coordinator.results import (
    CombinedCell,
    FederatedAnswer,
    NodeOutcome,
    NodeStatus,
    SecureSummary,
)
from tiaki.convert import answer_from_bytes, query_from_bytes, query_to_bytes
from tiaki.errors import TiakiError
from tiaki.query import Query, QueryKind

OnOutcome = Callable[[NodeOutcome, int, int], None]
OnWaiting = Callable[[list[str], float], None]
# How often an analyst hears which nodes are still being waited for.
PROGRESS_SECONDS = 2.0


def _skipped(checks: dict[str, Preflight], why: str) -> list[NodeOutcome]:
    outcomes = []
    for name, check in checks.items():
        if check.ok:
            outcomes.append(NodeOutcome(name, NodeStatus.SKIPPED, why))
        else:
            assert check.status is not None
            outcomes.append(NodeOutcome(name, check.status, check.reason))
    return outcomes


def midpoints(outcomes: Sequence[NodeOutcome]) -> dict[str, float]:
    """Each answering node's clamping midpoint for a mean, as its answer states it."""
    return {
        o.node: o.answer.midpoint
        for o in outcomes
        if o.answer is not None and o.answer.midpoint is not None
    }


def ask_federation(
    federation: Federation,
    query: Query,
    *,
    analyst: str,
    mirror: MirrorLedger,
    require_all: bool = False,
    query_id: str | None = None,
    on_outcome: OnOutcome | None = None,
    on_waiting: OnWaiting | None = None,
    unreliable_share: float = UNRELIABLE_SHARE,
) -> FederatedAnswer:
    """Ask every node concurrently and combine what comes back.

    With ``require_all``, nothing is sent unless every node's pre-flight says
    it would answer, and nothing is released unless every node did.
    """
    query_id = query_id or new_query_id()
    checks = preflight(federation, query, query_id)
    ready = [name for name, check in checks.items() if check.ok]
    canonical = query.canonical()
    total = len(checks)

    # The intent is durable before any node is asked (or the question is dropped).
    mirror.record_intent(
        query_id=query_id,
        analyst=analyst,
        identity=federation.identity,
        canonical_query=canonical,
        nodes=list(checks),
        requested=query.cost.amount,
        definition=query.cost.definition,
        request=query_to_bytes(query, query_id=query_id, analyst=analyst),
        require_all=require_all,
    )
    mean = query.kind is QueryKind.MEAN
    if require_all and len(ready) < total:
        outcomes = _skipped(checks, "not asked: another node would not answer (--require-all)")
        mirror.record_outcomes(query_id, outcomes)
        return FederatedAnswer(query_id, query, query.group_by, (), tuple(outcomes), False)

    by_node: dict[str, NodeOutcome] = {}
    for name, check in checks.items():
        if not check.ok:
            assert check.status is not None
            by_node[name] = NodeOutcome(name, check.status, check.reason)
    if by_node:
        mirror.record_outcomes(query_id, list(by_node.values()))

    retries = federation.config.defaults.retries
    futures = {
        start_ask(
            federation, name, query, query_id=query_id, analyst=analyst, retries=retries
        ): name
        for name in ready
    }
    done = len(by_node)
    pending = set(futures)
    started = time.monotonic()
    while pending:
        finished, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
        if not finished and on_waiting is not None:
            on_waiting(sorted(futures[f] for f in pending), time.monotonic() - started)
        # Outcomes that arrive together are committed together: one durable
        # write per batch rather than per node.
        batch = [future.result() for future in finished]
        if batch:
            # The mirror keeps each answer and, for a mean, its midpoint beside it.
            mirror.record_outcomes(query_id, batch, midpoints(batch) if mean else None)
        for outcome in batch:
            by_node[outcome.node] = outcome
            done += 1
            if on_outcome is not None:
                on_outcome(outcome, done, total)

    final = tuple(by_node[name] for name in checks)
    released = not require_all or all(o.answered for o in final)
    cells: tuple[CombinedCell, ...] = ()
    if released:
        # Each answer carries what combining it needs (a mean's midpoint among it).
        cells = combine_outcomes(query, final, None, unreliable_share)
    return FederatedAnswer(query_id, query, query.group_by, cells, final, released)


def past_answer(
    mirror: MirrorLedger, query_id: str, unreliable_share: float = UNRELIABLE_SHARE
) -> FederatedAnswer:
    """A question answered before, combined again from the answers the mirror kept.

    Asks no node and spends nothing: combining is post-processing of what was
    released, so the result is the one first shown. :class:`UnknownQuestion`
    if the mirror holds no such question, or kept nothing to rebuild it from.
    """
    stored = mirror.stored_question(query_id)
    if stored is None:
        raise UnknownQuestion(f"the mirror ledger has no question with id {query_id!r}")
    if stored.request is None:
        raise UnknownQuestion(
            f"question {query_id!r} was recorded before answers were kept; it cannot be shown"
        )
    _, _, query = query_from_bytes(stored.request)
    (question,) = [q for q in mirror.questions() if q.query_id == query_id]
    outcomes = []
    for row in question.outcomes:
        raw = stored.answers.get(row.node)
        answer = answer_from_bytes(raw) if raw else None
        status = NodeStatus.UNREACHABLE if row.pending else NodeStatus(row.status)
        reason = "no outcome recorded (the coordinator stopped)" if row.pending else row.reason
        outcomes.append(
            NodeOutcome(row.node, status, reason, row.charged, answer, row.attempts, row.seconds)
        )
    final = tuple(outcomes)
    if stored.secure_session is not None:
        summary = SecureSummary.from_json(stored.secure_session)
        raw_total = stored.answers.get(SECURE_TOTAL)
        if raw_total is None:  # the session aborted: nothing was released
            return FederatedAnswer(query_id, query, query.group_by, (), final, False, summary)
        total = answer_from_bytes(raw_total)
        cells = combine_secure(query, total, summary.summed, unreliable_share)
        return FederatedAnswer(query_id, query, query.group_by, cells, final, True, summary)
    released = not stored.require_all or all(o.answered for o in final)
    mids = stored.midpoints if query.kind is QueryKind.MEAN else None
    cells = combine_outcomes(query, final, mids, unreliable_share) if released else ()
    return FederatedAnswer(query_id, query, query.group_by, cells, final, released)


class UnknownQuestion(TiakiError):
    """No question under this id in the mirror, or none that can be shown again."""
