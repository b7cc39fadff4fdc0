"""``to_proto`` / ``from_proto`` for every contract type, in one place.

No other module turns a contract type into protobuf or back: node and
coordinator hand domain types to their servicer and client, which convert
here, once. Decoding a request validates it: whatever arrives over the wire
becomes either a well-formed :class:`~tiaki.query.Query` or an
:class:`InvalidQueryError`.

An answer has a stored form (:func:`answer_to_bytes`): the bytes a node's
ledger keeps and commits to (:mod:`tiaki.receipts`). A reply is that stored
form followed by what differs between replies (:func:`reply_bytes`), so a
node encodes each answer once.
"""

from __future__ import annotations

from dataclasses import replace

from tiaki.answer import Answer, Cell, Component
from tiaki.budget import BudgetStatus, PeriodBudget, PrivacyDefinition, format_amount, read_amount
from tiaki.errors import InvalidQueryError
from tiaki.node_info import (
    ColumnInfo,
    NodeInfo,
    NodePlan,
    PlannedComponent,
    SecureAggregationInfo,
)
from tiaki.query import (
    Bounds,
    DateRange,
    Filter,
    InSet,
    NumericRange,
    PrivacyCost,
    Query,
    QueryKind,
    check_query_id,
    parse_iso_date,
)
from tiaki.v1 import node_pb2 as pb

_KIND_TO_PB = {
    QueryKind.COUNT: pb.COUNT,
    QueryKind.COUNT_CLIENTS: pb.COUNT_CLIENTS,
    QueryKind.SUM: pb.SUM,
    QueryKind.MEAN: pb.MEAN,
    QueryKind.PROPORTION: pb.PROPORTION,
    QueryKind.HISTOGRAM: pb.HISTOGRAM,
}
_KIND_FROM_PB: dict[int, QueryKind] = {int(v): k for k, v in _KIND_TO_PB.items()}

_DEF_TO_PB = {PrivacyDefinition.PURE: pb.PURE_DP, PrivacyDefinition.ZCDP: pb.ZCDP}
_DEF_FROM_PB: dict[int, PrivacyDefinition] = {int(v): k for k, v in _DEF_TO_PB.items()}


def kind_to_proto(kind: QueryKind) -> pb.QueryKind:
    return _KIND_TO_PB[kind]


def kind_from_proto(value: int) -> QueryKind:
    try:
        return _KIND_FROM_PB[value]
    except KeyError:
        known = ", ".join(k.value for k in QueryKind)
        raise InvalidQueryError(f"unknown query kind {value}; known kinds: {known}") from None


def definition_to_proto(definition: PrivacyDefinition) -> pb.PrivacyDefinition:
    return _DEF_TO_PB[definition]


def definition_from_proto(value: int) -> PrivacyDefinition:
    try:
        return _DEF_FROM_PB[value]
    except KeyError:
        raise InvalidQueryError(f"unknown privacy definition {value}") from None


# ---------------------------------------------------------------- filters


def filter_to_proto(flt: Filter) -> pb.Filter:
    if isinstance(flt, InSet):
        return pb.Filter(column=flt.column, in_set=pb.ValueSet(values=list(flt.values)))
    if isinstance(flt, NumericRange):
        rng = pb.NumericRange()
        if flt.min is not None:
            rng.min = flt.min
        if flt.max is not None:
            rng.max = flt.max
        return pb.Filter(column=flt.column, numeric_range=rng)
    return pb.Filter(
        column=flt.column,
        date_range=pb.DateRange(
            start=flt.start.isoformat() if flt.start else "",
            end=flt.end.isoformat() if flt.end else "",
        ),
    )


def filter_from_proto(msg: pb.Filter) -> Filter:
    which = msg.WhichOneof("condition")
    if which == "in_set":
        return InSet(msg.column, tuple(msg.in_set.values))
    if which == "numeric_range":
        rng = msg.numeric_range
        return NumericRange(
            msg.column,
            rng.min if rng.HasField("min") else None,
            rng.max if rng.HasField("max") else None,
        )
    if which == "date_range":
        return DateRange(
            msg.column,
            parse_iso_date(msg.date_range.start, f"date range start on {msg.column[:40]!r}"),
            parse_iso_date(msg.date_range.end, f"date range end on {msg.column[:40]!r}"),
        )
    raise InvalidQueryError(f"filter on {msg.column[:40]!r} has no condition")


# ---------------------------------------------------------------- queries


def cost_to_proto(cost: PrivacyCost) -> pb.PrivacyCost:
    text = format_amount(cost.amount)
    if cost.definition is PrivacyDefinition.PURE:
        return pb.PrivacyCost(epsilon=text)
    return pb.PrivacyCost(rho=text)


def cost_from_proto(msg: pb.PrivacyCost) -> PrivacyCost:
    if msg.epsilon and msg.rho:
        raise InvalidQueryError("give either epsilon or rho, not both")
    if msg.epsilon:
        return PrivacyCost.parse(PrivacyDefinition.PURE, msg.epsilon)
    if msg.rho:
        return PrivacyCost.parse(PrivacyDefinition.ZCDP, msg.rho)
    raise InvalidQueryError("the query names no privacy cost; give epsilon or rho")


def charged_from_proto(msg: pb.PrivacyCost) -> PrivacyCost:
    """A charge reported by a node: exact, possibly with many decimal places."""
    if msg.epsilon:
        return PrivacyCost(PrivacyDefinition.PURE, read_amount(msg.epsilon))
    return PrivacyCost(PrivacyDefinition.ZCDP, read_amount(msg.rho))


def query_to_proto(query: Query, *, query_id: str, analyst: str) -> pb.QueryRequest:
    msg = pb.QueryRequest(
        query_id=query_id,
        analyst=analyst,
        kind=kind_to_proto(query.kind),
        column=query.column or "",
        filters=[filter_to_proto(f) for f in query.filters],
        group_by=list(query.group_by),
        condition=[filter_to_proto(f) for f in query.condition],
        bin_edges=list(query.bin_edges),
        cost=cost_to_proto(query.cost),
    )
    if query.bounds is not None:
        msg.bounds.CopyFrom(pb.Bounds(lower=query.bounds.lower, upper=query.bounds.upper))
    return msg


def query_from_proto(msg: pb.QueryRequest, *, require_id: bool = True) -> tuple[str, str, Query]:
    """Decode and validate a request into (query id, analyst, query).

    ``require_id=False`` (for ``Plan``) lets the id be empty: no id, no lookup.
    """
    if require_id or msg.query_id:
        check_query_id(msg.query_id)
    if len(msg.analyst) > 256 or not msg.analyst.isprintable():
        raise InvalidQueryError("analyst name must be at most 256 printable characters")
    query = Query(
        kind=kind_from_proto(msg.kind),
        cost=cost_from_proto(msg.cost),
        column=msg.column or None,
        bounds=Bounds(msg.bounds.lower, msg.bounds.upper) if msg.HasField("bounds") else None,
        filters=tuple(filter_from_proto(f) for f in msg.filters),
        group_by=tuple(msg.group_by),
        condition=tuple(filter_from_proto(f) for f in msg.condition),
        bin_edges=tuple(msg.bin_edges),
    )
    return msg.query_id, msg.analyst, query


def query_to_bytes(query: Query, *, query_id: str, analyst: str) -> bytes:
    """A request as kept by a coordinator's mirror, to ask or show the question again."""
    return query_to_proto(query, query_id=query_id, analyst=analyst).SerializeToString()


def query_from_bytes(data: bytes) -> tuple[str, str, Query]:
    """Inverse of :func:`query_to_bytes`: (query id, analyst, query)."""
    return query_from_proto(pb.QueryRequest.FromString(data))


# ---------------------------------------------------------------- budgets


def period_to_proto(period: PeriodBudget) -> pb.PeriodBudget:
    return pb.PeriodBudget(
        label=period.label,
        start=period.start,
        end=period.end,
        limit=format_amount(period.limit),
        spent=format_amount(period.spent),
        remaining=format_amount(period.remaining),
    )


def period_from_proto(msg: pb.PeriodBudget) -> PeriodBudget:
    return PeriodBudget(
        label=msg.label,
        start=msg.start,
        end=msg.end,
        limit=read_amount(msg.limit),
        spent=read_amount(msg.spent),
    )


def budget_to_proto(status: BudgetStatus) -> pb.BudgetReport:
    return pb.BudgetReport(
        definition=definition_to_proto(status.definition),
        per_query_max=format_amount(status.per_query_max),
        current=period_to_proto(status.current),
        lifetime_spent=format_amount(status.lifetime_spent),
        lifetime_limit=(
            format_amount(status.lifetime_limit) if status.lifetime_limit is not None else ""
        ),
        periods=[period_to_proto(p) for p in status.periods],
    )


def budget_from_proto(msg: pb.BudgetReport) -> BudgetStatus:
    return BudgetStatus(
        definition=definition_from_proto(msg.definition),
        per_query_max=read_amount(msg.per_query_max),
        current=period_from_proto(msg.current),
        lifetime_spent=read_amount(msg.lifetime_spent),
        lifetime_limit=read_amount(msg.lifetime_limit) if msg.lifetime_limit else None,
        periods=tuple(period_from_proto(p) for p in msg.periods),
    )


# ---------------------------------------------------------------- answers


def answer_to_proto(answer: Answer) -> pb.QueryResponse:
    msg = pb.QueryResponse(
        query_id=answer.query_id,
        node_id=answer.node_id,
        canonical_query=answer.canonical_query,
        group_by=list(answer.group_by),
        cells=[
            pb.Cell(
                group=list(cell.group),
                bin=cell.bin,
                value=cell.value,
                accuracy_95=cell.accuracy_95,
                components=[
                    pb.Component(
                        name=c.name,
                        value=c.value,
                        distribution=c.distribution,
                        scale=c.scale,
                        accuracy_95=c.accuracy_95,
                    )
                    for c in cell.components
                ],
            )
            for cell in answer.cells
        ],
        charged=cost_to_proto(answer.charged),
        dataset_version=answer.dataset_version,
        replayed=answer.replayed,
        commitment_salt=answer.commitment_salt,
        max_records_per_client=answer.max_records_per_client,
    )
    if answer.bounds is not None:
        msg.bounds.CopyFrom(pb.Bounds(lower=answer.bounds[0], upper=answer.bounds[1]))
    if answer.midpoint is not None:
        msg.midpoint = answer.midpoint
    if answer.grid_unit is not None:
        msg.grid_unit = answer.grid_unit
    if answer.privacy_map is not None:
        msg.privacy_map.CopyFrom(cost_to_proto(answer.privacy_map))
    if answer.budget is not None:
        msg.budget.CopyFrom(budget_to_proto(answer.budget))
    return msg


def answer_from_proto(msg: pb.QueryResponse) -> Answer:
    return Answer(
        query_id=msg.query_id,
        node_id=msg.node_id,
        canonical_query=msg.canonical_query,
        group_by=tuple(msg.group_by),
        cells=tuple(
            Cell(
                group=tuple(c.group),
                bin=c.bin,
                value=c.value,
                accuracy_95=c.accuracy_95,
                components=tuple(
                    Component(k.name, k.value, k.distribution, k.scale, k.accuracy_95)
                    for k in c.components
                ),
            )
            for c in msg.cells
        ),
        charged=charged_from_proto(msg.charged),
        dataset_version=msg.dataset_version,
        replayed=msg.replayed,
        budget=budget_from_proto(msg.budget) if msg.HasField("budget") else None,
        privacy_map=charged_from_proto(msg.privacy_map) if msg.HasField("privacy_map") else None,
        commitment_salt=bytes(msg.commitment_salt),
        max_records_per_client=msg.max_records_per_client,
        bounds=(msg.bounds.lower, msg.bounds.upper) if msg.HasField("bounds") else None,
        midpoint=msg.midpoint if msg.HasField("midpoint") else None,
        grid_unit=msg.grid_unit if msg.HasField("grid_unit") else None,
    )


def answer_to_bytes(answer: Answer) -> bytes:
    """The stored form of ``answer``: without the budget, the replay flag and the salt.

    Deterministic, so the ledger's commitment to these bytes can be checked
    against a reply (:func:`tiaki.receipts.commitment_of`).
    """
    stored = replace(answer, budget=None, replayed=False, commitment_salt=b"")
    return answer_to_proto(stored).SerializeToString(deterministic=True)


def answer_from_bytes(data: bytes) -> Answer:
    """An answer from its stored form or from a reply."""
    return answer_from_proto(pb.QueryResponse.FromString(data))


def reply_bytes(stored: bytes, answer: Answer) -> bytes:
    """The reply carrying ``answer``, made from its stored form ``stored``.

    Protobuf reads concatenated messages as one (later fields merge into
    earlier), and the stored form leaves the budget, the replay flag and the
    salt unset: appending them gives exactly the reply, without encoding the
    cells a second time. ``stored`` must be :func:`answer_to_bytes` of ``answer``.
    """
    extra = pb.QueryResponse(replayed=answer.replayed, commitment_salt=answer.commitment_salt)
    if answer.budget is not None:
        extra.budget.CopyFrom(budget_to_proto(answer.budget))
    return stored + extra.SerializeToString()


# ---------------------------------------------------------------- info and plans


def _bounds(msg: pb.Bounds) -> tuple[float, float]:
    return (msg.lower, msg.upper)


def column_to_proto(column: ColumnInfo) -> pb.ColumnInfo:
    msg = pb.ColumnInfo(
        name=column.name,
        type=column.type,
        categories=list(column.categories),
        date_min=column.date_min,
        date_max=column.date_max,
        expression=column.expression,
    )
    if column.bounds is not None:
        msg.bounds.CopyFrom(pb.Bounds(lower=column.bounds[0], upper=column.bounds[1]))
    return msg


def column_from_proto(msg: pb.ColumnInfo) -> ColumnInfo:
    return ColumnInfo(
        name=msg.name,
        type=msg.type,
        categories=tuple(msg.categories),
        bounds=_bounds(msg.bounds) if msg.HasField("bounds") else None,
        date_min=msg.date_min,
        date_max=msg.date_max,
        expression=msg.expression,
    )


def node_info_to_proto(info: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        node_id=info.node_id,
        version=info.version,
        definition=definition_to_proto(info.definition),
        identifier_column=info.identifier_column,
        columns=[column_to_proto(c) for c in info.columns],
        allowed_kinds=[kind_to_proto(k) for k in info.allowed_kinds],
        max_records_per_client=info.max_records_per_client,
        per_query_max=format_amount(info.per_query_max),
        budget_period=info.budget_period,
        max_group_by=info.max_group_by,
        max_cells=info.max_cells,
        dataset_version=info.dataset_version,
        signing_key=info.signing_key,
        ledger_id=info.ledger_id,
        secure_aggregation=(
            pb.SecureAggregationInfo(
                min_cohort=info.secure_aggregation.min_cohort,
                colluders=info.secure_aggregation.colluders,
                worst_case_per_query=format_amount(info.secure_aggregation.worst_case_per_query),
                worst_case_remaining=format_amount(info.secure_aggregation.worst_case_remaining),
            )
            if info.secure_aggregation is not None
            else None
        ),
    )


def node_info_from_proto(msg: pb.NodeInfo) -> NodeInfo:
    """A node's metadata; a kind this version does not know is left out (it cannot ask it)."""
    return NodeInfo(
        node_id=msg.node_id,
        version=msg.version,
        definition=definition_from_proto(msg.definition),
        identifier_column=msg.identifier_column,
        columns=tuple(column_from_proto(c) for c in msg.columns),
        allowed_kinds=tuple(_KIND_FROM_PB[k] for k in msg.allowed_kinds if k in _KIND_FROM_PB),
        max_records_per_client=msg.max_records_per_client,
        per_query_max=read_amount(msg.per_query_max),
        budget_period=msg.budget_period,
        max_group_by=msg.max_group_by,
        max_cells=msg.max_cells,
        dataset_version=msg.dataset_version,
        signing_key=msg.signing_key,
        ledger_id=msg.ledger_id,
        secure_aggregation=(
            SecureAggregationInfo(
                msg.secure_aggregation.min_cohort,
                msg.secure_aggregation.colluders,
                read_amount(msg.secure_aggregation.worst_case_per_query or "0"),
                read_amount(msg.secure_aggregation.worst_case_remaining or "0"),
            )
            if msg.HasField("secure_aggregation")
            else None
        ),
    )


def node_plan_to_proto(plan: NodePlan) -> pb.QueryPlan:
    msg = pb.QueryPlan(
        node_id=plan.node_id,
        canonical_query=plan.canonical_query,
        group_by=list(plan.group_by),
        cells=plan.cells,
        components=[
            pb.PlannedComponent(
                name=c.name, distribution=c.distribution, scale=c.scale, accuracy_95=c.accuracy_95
            )
            for c in plan.components
        ],
        charge=cost_to_proto(plan.charge),
        replay=plan.replay,
    )
    if plan.budget is not None:
        msg.budget.CopyFrom(budget_to_proto(plan.budget))
    if plan.bounds is not None and plan.midpoint is not None:
        msg.bounds.CopyFrom(pb.Bounds(lower=plan.bounds[0], upper=plan.bounds[1]))
        msg.midpoint = plan.midpoint
    if plan.grid_unit is not None:
        msg.grid_unit = plan.grid_unit
    return msg


def node_plan_from_proto(msg: pb.QueryPlan) -> NodePlan:
    has_bounds = msg.HasField("bounds")
    return NodePlan(
        node_id=msg.node_id,
        canonical_query=msg.canonical_query,
        group_by=tuple(msg.group_by),
        cells=msg.cells,
        components=tuple(
            PlannedComponent(c.name, c.distribution, c.scale, c.accuracy_95) for c in msg.components
        ),
        charge=charged_from_proto(msg.charge),
        budget=budget_from_proto(msg.budget) if msg.HasField("budget") else None,
        replay=msg.replay,
        bounds=_bounds(msg.bounds) if has_bounds else None,
        midpoint=msg.midpoint if has_bounds else None,
        grid_unit=msg.grid_unit if msg.grid_unit > 0 else None,
    )
