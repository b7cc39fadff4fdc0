"""One question to the federation as a secure sum: one noise, one answer, no node's own.

Asked this way, every member adds a *share* of one discrete Gaussian noise
to its exact answer and masks it, and the coordinator learns only the total
(:mod:`coordinator.secure_sum` relays the rounds). The combined answer then
carries the noise of one central release, about, however many NGOs join,
where asking each node adds N noises. The session's public parameters are
chosen by :mod:`coordinator.secure_plan` from what the nodes publish.

The analyst sees one answer per cell with a 95% interval from the known
total noise, the number of inputs summed, and what each node charged
(aggregate and worst case). There are no per-node answers anywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from fractions import Fraction

from coordinator.client import new_query_id
from coordinator.combine import UNRELIABLE_SHARE, Z_95, combine_secure
from coordinator.fanout import Federation, failure_outcome
from coordinator.mirror import SECURE_TOTAL, MirrorLedger
from coordinator.results import (
    FederatedAnswer,
    NodeOutcome,
    NodeStatus,
    SecureSummary,
)
from coordinator.secure_plan import DEFAULT_SESSION_SECONDS as DEFAULT_SESSION_SECONDS
from coordinator.secure_plan import SecureMember as SecureMember
from coordinator.secure_plan import SecurePlan as SecurePlan
from coordinator.secure_plan import SecureQuestionError as SecureQuestionError
from coordinator.secure_plan import choose_secure_cost as choose_secure_cost
from coordinator.secure_plan import choose_session as choose_session
from coordinator.secure_plan import column_divisor, plan_secure
from coordinator.secure_sum import SecureSum, SessionAbortedError, new_session, run_session
from tiaki.answer import Answer, Cell, Component
from tiaki.budget import display_amount
from tiaki.convert import query_to_bytes
from tiaki.errors import TiakiError
from tiaki.query import Query
from tiaki.secagg.session import Member, SessionParameters


def session_of(
    plan: SecurePlan, query_id: str, query: Query, analyst: str, seconds: float
) -> SessionParameters:
    """The session a plan stands for: its members numbered from 1, valid ``seconds``."""
    return new_session(
        query_id,
        query,
        [
            Member(i, m.info.node_id, m.info.signing_key)
            for i, m in enumerate(plan.members, start=1)
        ],
        threshold=plan.threshold,
        colluders=plan.colluders,
        scale_factors=plan.scale_factors,
        share_scales=plan.share_scales,
        not_after=int(time.time() + seconds),
        analyst=analyst,
    )


def ask_secure(
    federation: Federation,
    query: Query,
    *,
    analyst: str,
    mirror: MirrorLedger,
    query_id: str | None = None,
    dropouts: int | None = None,
    colluders: int = 0,
    session_seconds: float = DEFAULT_SESSION_SECONDS,
    unreliable_share: float = UNRELIABLE_SHARE,
) -> FederatedAnswer:
    """Plan, record the intent, run the session and combine; the mirror records each charge.

    A session that loses more than its tolerated dropouts releases nothing
    (``released`` False); the members that had sent their input are charged
    and the outcomes say so.
    """
    query_id = query_id or new_query_id()
    plan = plan_secure(federation, query, query_id, dropouts=dropouts, colluders=colluders)
    mirror.record_intent(
        query_id=query_id,
        analyst=analyst,
        identity=federation.identity,
        canonical_query=query.canonical(),
        nodes=federation.names,
        requested=query.cost.amount,
        definition=query.cost.definition,
        request=query_to_bytes(query, query_id=query_id, analyst=analyst),
    )
    skipped = [NodeOutcome(name, status, why) for name, (status, why) in plan.excluded.items()]
    if skipped:
        mirror.record_outcomes(query_id, skipped)
    params = session_of(plan, query_id, query, analyst, session_seconds)
    names = {i: m.name for i, m in enumerate(plan.members, start=1)}
    links = {i: federation.clients[name] for i, name in names.items()}
    started = time.monotonic()
    session = params.session_id.hex()
    try:
        result = run_session(params, links)
    except SessionAbortedError as exc:
        outcomes = _aborted_outcomes(names, exc, query.cost.amount, session, started)
        mirror.record_outcomes(query_id, outcomes)
        by_name = {o.node: o for o in (*skipped, *outcomes)}
        final = tuple(by_name[name] for name in federation.names)
        stopped = SecureSummary(
            session_id=session,
            size=plan.size,
            threshold=plan.threshold,
            colluders=plan.colluders,
            honest=plan.honest,
            summed=0,
            error_ratio=math.nan,
            charges={},
            stopped=exc.message,
        )
        mirror.record_secure_total(query_id, None, stopped.to_json())
        return FederatedAnswer(query_id, query, query.group_by, (), final, False, stopped)
    outcomes = _outcomes(names, result, query.cost.amount, session, started)
    mirror.record_outcomes(query_id, outcomes)
    by_name = {o.node: o for o in (*skipped, *outcomes)}
    final = tuple(by_name[name] for name in federation.names)
    total = secure_total(query, plan, result)
    cells = combine_secure(query, total, len(result.survivors), unreliable_share)
    summary = SecureSummary(
        session_id=session,
        size=plan.size,
        threshold=plan.threshold,
        colluders=plan.colluders,
        honest=plan.honest,
        summed=len(result.survivors),
        error_ratio=plan.error_ratio(len(result.survivors)),
        charges={names[i]: charge for i, charge in sorted(result.charges.items())},
    )
    mirror.record_secure_total(query_id, total, summary.to_json())
    return FederatedAnswer(query_id, query, query.group_by, cells, final, True, summary)


def _outcomes(
    names: Mapping[int, str], result: SecureSum, cost: Fraction, session: str, started: float
) -> list[NodeOutcome]:
    seconds = time.monotonic() - started
    out = []
    for i, name in names.items():
        if i in result.charges:
            aggregate, worst = result.charges[i]
            summed = "summed" if i in result.survivors else "sent, but not summed"
            reason = (
                f"secure sum {session}: input {summed}; worst case "
                f"{display_amount(worst)}, aggregate guarantee {display_amount(aggregate)}"
            )
            if i not in result.survivors:
                reason += f" ({result.dropped.get(i, 'dropped')})"
            out.append(NodeOutcome(name, NodeStatus.ANSWERED, reason, cost, None, 1, seconds))
        else:
            out.append(_dropped(name, result.dropped.get(i), result.errors.get(i)))
    return out


def _aborted_outcomes(
    names: Mapping[int, str],
    exc: SessionAbortedError,
    cost: Fraction,
    session: str,
    started: float,
) -> list[NodeOutcome]:
    seconds = time.monotonic() - started
    out = []
    for i, name in names.items():
        why = exc.dropped.get(i, f"the session stopped at {exc.round_name}")
        if i in exc.charged:
            reason = (
                f"secure sum {session} aborted at {exc.round_name} after this node's input: "
                f"charged, nothing released ({why})"
            )
            out.append(NodeOutcome(name, NodeStatus.ANSWERED, reason, cost, None, 1, seconds))
        else:
            out.append(_dropped(name, why, exc.errors.get(i)))
    return out


def _dropped(name: str, why: str | None, error: TiakiError | None) -> NodeOutcome:
    """A member that left the session: why, in words, and what kind of failure, by type."""
    if error is not None:
        status, reason = failure_outcome(error)
        return NodeOutcome(name, status, f"dropped out: {reason}")
    # No call failed: it sent something that did not check, or was not asked.
    return NodeOutcome(name, NodeStatus.REFUSED, f"dropped out: {why or 'did not take part'}")


def secure_total(query: Query, plan: SecurePlan, result: SecureSum) -> Answer:
    """The decoded total as one answer in column units: what the mirror keeps.

    Each component's noise is the sum of the summed inputs' shares, a discrete
    Gaussian of variance at most Σσᵢ²/γ² (:func:`tiaki.distributed_noise.sum_variance`),
    stated as the scale of one discrete Gaussian of that variance.
    """
    parts = []
    for comp in result.components:
        divisor = column_divisor(comp.name, plan.grid_unit)
        sd = math.sqrt(comp.variance) / divisor
        parts.append((comp.name, comp.values / divisor, sd))
    cells = tuple(
        Cell(
            group=key.group,
            bin=key.bin,
            value=float(parts[0][1][i]),
            accuracy_95=Z_95 * parts[0][2],
            components=tuple(
                Component(name, float(values[i]), "discrete_gaussian", sd, Z_95 * sd)
                for name, values, sd in parts
            ),
        )
        for i, key in enumerate(result.cells)
    )
    return Answer(
        query_id=result.params.query_id,
        node_id=SECURE_TOTAL,
        canonical_query=query.canonical(),
        group_by=query.group_by,
        cells=cells,
        charged=query.cost,
        dataset_version="",
        replayed=False,
        budget=None,
        bounds=plan.members[0].plan.bounds,
        midpoint=plan.midpoint,
        grid_unit=plan.grid_unit,
    )


__all__: Sequence[str] = ("SecurePlan", "SecureSummary", "ask_secure", "plan_secure")
