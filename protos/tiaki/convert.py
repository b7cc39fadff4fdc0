"""``to_proto`` / ``from_proto`` for every contract type, in one place.

Decoding a request validates it: whatever arrives over the wire becomes either
a well-formed :class:`~tiaki.query.Query` or an :class:`InvalidQueryError`.
"""

from __future__ import annotations

from tiaki.answer import Answer, Cell, Component
from tiaki.budget import BudgetStatus, PeriodBudget, PrivacyDefinition, format_amount, read_amount
from tiaki.errors import InvalidQueryError
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
    )
