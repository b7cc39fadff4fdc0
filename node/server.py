"""The gRPC face of a node: a thin servicer, the server factory, health and shutdown.

The servicer is the node's edge: it refuses over-large requests, converts
messages to contract types and back (:mod:`tiaki.convert`, once each way),
hands them to :class:`NodeService`, and turns typed errors into a rich status
(:mod:`tiaki.wire_errors`) in exactly one place (``_answering``). An
unexpected error is logged in full here and reported to the caller only as
INTERNAL with a reference, so no stack trace or path leaves the node.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.access import Caller, Gatekeeper, caller_of
from node.config import CoordinatorGrant
from node.secure_sum import SecureSumParticipant
from node.service import NodeService
from tiaki.budget import display_amount
from tiaki.convert import (
    budget_to_proto,
    node_info_to_proto,
    node_plan_to_proto,
    query_from_proto,
    reply_bytes,
)
from tiaki.errors import InternalError, InvalidQueryError, TiakiError
from tiaki.query import Query
from tiaki.secagg.errors import SecureAggregationError
from tiaki.secagg.session import SessionParameters
from tiaki.secagg.wire import (
    advert_from_proto,
    advert_to_proto,
    masked_input_to_proto,
    reveal_to_proto,
    sealed_from_proto,
    sealed_to_proto,
    session_from_proto,
)
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc
from tiaki.wire_errors import status_code_of, to_status

log = logging.getLogger("tiaki.node")

SERVICE_NAME = "tiaki.v1.Node"
# Requests above this are refused before decoding their contents; real
# queries are a few hundred bytes.
MAX_REQUEST_BYTES = 64 * 1024
# A secure-sum round carries the whole roster and one message per member
# (about 200 bytes each at most): 1 MiB is room for the largest session.
MAX_SECURE_REQUEST_BYTES = 1024 * 1024

T = TypeVar("T")


@contextmanager
def _answering(context: grpc.ServicerContext, what: str) -> Iterator[None]:
    """Turn errors into a rich status: the single place this happens on the node."""
    try:
        yield
    except TiakiError as exc:
        context.abort_with_status(to_status(exc))
    except Exception:
        reference = secrets.token_hex(4)
        log.exception("%s failed (reference %s)", what, reference)
        context.abort_with_status(to_status(InternalError(reference)))


def _decoded(request: pb.QueryRequest, *, require_id: bool = True) -> tuple[str, str, Query]:
    """(query id, analyst, query) of a request no larger than :data:`MAX_REQUEST_BYTES`."""
    if request.ByteSize() > MAX_REQUEST_BYTES:
        raise InvalidQueryError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
    return query_from_proto(request, require_id=require_id)


class NodeServicer(node_pb2_grpc.NodeServicer):  # type: ignore[misc]
    """Every call: who is asking, are they allowed, then the plain function."""

    def __init__(self, service: NodeService, gatekeeper: Gatekeeper) -> None:
        self._service = service
        self._gate = gatekeeper

    def _call(
        self,
        context: grpc.ServicerContext,
        what: str,
        fn: Callable[[Caller, CoordinatorGrant | None], T],
        request: object = True,
        *,
        auditors: bool = False,
        kind: str | None = None,
    ) -> T:
        with _answering(context, what):
            if request is UNDECODABLE:
                raise InvalidQueryError("the request could not be decoded as a tiaki.v1 message")
            caller = caller_of(context)
            grant = self._gate.admit(caller, what, auditors=auditors, kind=kind)
            return fn(caller, grant)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.NodeInfo:
        return self._call(
            context,
            "GetInfo",
            lambda caller, grant: node_info_to_proto(self._service.info()),
            request,
            auditors=True,
        )

    def GetBudget(
        self, request: pb.GetBudgetRequest, context: grpc.ServicerContext
    ) -> pb.BudgetReport:
        return self._call(
            context,
            "GetBudget",
            lambda caller, grant: budget_to_proto(self._service.budget()),
            request,
            auditors=True,
        )

    def ExportLedger(
        self, request: pb.ExportLedgerRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ExportLedgerLine]:
        def run(caller: Caller, grant: CoordinatorGrant | None) -> list[str]:
            # Read and signed before the first line is sent: a slow reader holds
            # no ledger lock, and what it receives is one consistent snapshot.
            lines = list(self._service.export_ledger(request.from_seq))
            log.info("ledger export for %s: %d lines", caller.identity, len(lines))
            return lines

        for line in self._call(context, "ExportLedger", run, request, auditors=True):
            yield pb.ExportLedgerLine(line=line)

    def Plan(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.QueryPlan:
        def run(caller: Caller, grant: CoordinatorGrant | None) -> pb.QueryPlan:
            query_id, _, query = _decoded(request, require_id=False)
            return node_plan_to_proto(self._service.plan(caller.identity, query_id, query))

        return self._call(context, "Plan", run, request)

    # ------------------------------------------------------------ secure sums

    def _secure(
        self,
        context: grpc.ServicerContext,
        what: str,
        request: Any,
        fn: Callable[[SecureSumParticipant, SessionParameters, str, CoordinatorGrant | None], T],
        *,
        charges: bool = False,
    ) -> T:
        """One round of a secure sum: admitted like a query of its kind, then the protocol.

        The round that ``charges`` (the masked input) takes one of the
        caller's query slots, as a query does.
        """

        def run(caller: Caller, grant: CoordinatorGrant | None) -> T:
            if request.ByteSize() > MAX_SECURE_REQUEST_BYTES:
                raise InvalidQueryError(f"request is larger than {MAX_SECURE_REQUEST_BYTES} bytes")
            participant = self._service.secure_sums.participant()
            params = session_from_proto(request.session)
            if not charges:
                return fn(participant, params, caller.identity, grant)
            with self._gate.slot(caller):
                return fn(participant, params, caller.identity, grant)

        if request is UNDECODABLE:
            return self._call(context, what, run, request)
        kind_number = request.session.query.kind
        kind = (
            pb.QueryKind.Name(kind_number).lower() if kind_number in pb.QueryKind.values() else None
        )
        return self._call(context, what, run, kind=kind)

    def SecureAdvertise(
        self, request: pb.SecureAdvertiseRequest, context: grpc.ServicerContext
    ) -> pb.KeyAdvert:
        return self._secure(
            context,
            "SecureAdvertise",
            request,
            lambda p, params, who, grant: advert_to_proto(p.advertise(params, who)),
        )

    def SecureShareKeys(
        self, request: pb.SecureShareKeysRequest, context: grpc.ServicerContext
    ) -> pb.SecureShareKeysResponse:
        def run(
            p: SecureSumParticipant, params: SessionParameters, who: str, grant: object
        ) -> pb.SecureShareKeysResponse:
            adverts = [advert_from_proto(a) for a in request.adverts]
            sealed = p.share_keys(params, who, adverts)
            return pb.SecureShareKeysResponse(shares=[sealed_to_proto(s) for s in sealed])

        return self._secure(context, "SecureShareKeys", request, run)

    def SecureMaskedInput(
        self, request: pb.SecureMaskedInputRequest, context: grpc.ServicerContext
    ) -> pb.MaskedInput:
        def run(
            p: SecureSumParticipant,
            params: SessionParameters,
            who: str,
            grant: CoordinatorGrant | None,
        ) -> pb.MaskedInput:
            sealed = [sealed_from_proto(s) for s in request.shares]
            masked = p.masked_input(params, who, sealed, grant)
            log.info(
                "secure sum %s (query %s) from %s: %s, charged %s (worst case %s)",
                params.session_id.hex(),
                params.query_id,
                who,
                params.query.canonical()[:200],
                display_amount(params.query.cost.amount),
                display_amount(masked.worst_case),
                extra={
                    "session_id": params.session_id.hex(),
                    "query_id": params.query_id,
                    "identity": who,
                    "outcome": "masked_input",
                    "charge": str(params.query.cost.amount),
                },
            )
            return masked_input_to_proto(masked)

        return self._secure(context, "SecureMaskedInput", request, run, charges=True)

    def SecureConsistency(
        self, request: pb.SecureConsistencyRequest, context: grpc.ServicerContext
    ) -> pb.SurvivorSignature:
        def run(
            p: SecureSumParticipant, params: SessionParameters, who: str, grant: object
        ) -> pb.SurvivorSignature:
            signature = p.consistency(params, who, list(request.survivors))
            return pb.SurvivorSignature(index=params.member(p.node_id).index, signature=signature)

        return self._secure(context, "SecureConsistency", request, run)

    def SecureUnmask(
        self, request: pb.SecureUnmaskRequest, context: grpc.ServicerContext
    ) -> pb.Reveal:
        def run(
            p: SecureSumParticipant, params: SessionParameters, who: str, grant: object
        ) -> pb.Reveal:
            signatures = {s.index: s.signature for s in request.signatures}
            if len(signatures) != len(request.signatures):
                raise SecureAggregationError("two survivor signatures for one member")
            reveal = self._service.secure_sums.unmask(
                p, params, who, list(request.survivors), signatures
            )
            return reveal_to_proto(reveal)

        return self._secure(context, "SecureUnmask", request, run)

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> bytes:
        """One answer, as the bytes of a ``QueryResponse`` (see :func:`reply_bytes`)."""
        started = time.monotonic()
        # What was asked, for the log: the shape and the cost, never a value.
        kind = (
            pb.QueryKind.Name(request.kind).lower()
            if request is not UNDECODABLE and request.kind in pb.QueryKind.values()
            else None
        )

        def run(caller: Caller, grant: CoordinatorGrant | None) -> bytes:
            fields: dict[str, object] = {
                "query_id": request.query_id[:64],
                "identity": caller.identity,
                "kind": kind,
            }
            try:
                with self._gate.slot(caller):
                    query_id, analyst, query = _decoded(request)
                    released = self._service.query(caller.identity, query_id, analyst, query, grant)
            except TiakiError as exc:
                code = status_code_of(exc).name
                fields.update(outcome=code.lower(), duration_ms=_ms(started))
                log.info(
                    "query %s from %s refused (%s)",
                    fields["query_id"],
                    caller.identity,
                    code,
                    extra=fields,
                )
                raise
            answer = released.answer
            fields.update(
                outcome="replayed" if answer.replayed else "answered",
                charge=str(answer.charged),
                duration_ms=_ms(started),
            )
            log.info(
                "query %s from %s: %s charged %s%s",
                answer.query_id,
                caller.identity,
                answer.canonical_query[:200],
                answer.charged,
                " (replayed)" if answer.replayed else "",
                extra=fields,
            )
            return reply_bytes(released.stored, answer)

        if request is UNDECODABLE:
            return self._call(context, "Query", run, request)
        cost = (request.cost.epsilon or request.cost.rho)[:20]
        what = f"Query {(kind or '?').upper()} (id {request.query_id[:40]!r}, cost {cost})"
        return self._call(context, what[:200], run, kind=kind)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


# Stands for a request whose bytes do not decode (grpc itself would answer a
# failed decode, or a None, with INTERNAL; this lets us say INVALID_ARGUMENT).
UNDECODABLE = object()


def _tolerant(message: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError:
            return UNDECODABLE

    return decode


def _node_handlers(servicer: NodeServicer) -> grpc.GenericRpcHandler:
    methods: dict[str, tuple[Callable[..., Any], Any, Any]] = {
        "GetInfo": (servicer.GetInfo, pb.GetInfoRequest, pb.NodeInfo),
        "GetBudget": (servicer.GetBudget, pb.GetBudgetRequest, pb.BudgetReport),
        "Plan": (servicer.Plan, pb.QueryRequest, pb.QueryPlan),
        "Query": (servicer.Query, pb.QueryRequest, None),  # already bytes
        "SecureAdvertise": (servicer.SecureAdvertise, pb.SecureAdvertiseRequest, pb.KeyAdvert),
        "SecureShareKeys": (
            servicer.SecureShareKeys,
            pb.SecureShareKeysRequest,
            pb.SecureShareKeysResponse,
        ),
        "SecureMaskedInput": (
            servicer.SecureMaskedInput,
            pb.SecureMaskedInputRequest,
            pb.MaskedInput,
        ),
        "SecureConsistency": (
            servicer.SecureConsistency,
            pb.SecureConsistencyRequest,
            pb.SurvivorSignature,
        ),
        "SecureUnmask": (servicer.SecureUnmask, pb.SecureUnmaskRequest, pb.Reveal),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=_tolerant(request),
            response_serializer=response.SerializeToString if response is not None else None,
        )
        for name, (behaviour, request, response) in methods.items()
    }
    handlers["ExportLedger"] = grpc.unary_stream_rpc_method_handler(
        servicer.ExportLedger,
        request_deserializer=_tolerant(pb.ExportLedgerRequest),
        response_serializer=pb.ExportLedgerLine.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


@dataclass
class RunningNode:
    """A started node server: its port, its service, and how to stop it."""

    server: grpc.Server
    port: int
    service: NodeService
    health: health.HealthServicer
    servicer: NodeServicer  # also runs the work a hub relays (node.hub_link)

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight queries finish (they charge before replying)."""
        self.set_serving(False)
        wait = self.server.stop(
            self.service.config.server.grace_seconds if grace is None else grace
        )
        wait.wait()


def server_options(max_connection_age_seconds: float = 300.0) -> list[tuple[str, Any]]:
    age_ms = int(max_connection_age_seconds * 1000)
    return [
        # One node per port: grpc sets SO_REUSEPORT by default, which lets a
        # second server bind the same address and silently share its traffic.
        ("grpc.so_reuseport", 0),
        # Every connection is re-established (a new TLS handshake, against the
        # client CA in force) at least this often, so a coordinator whose CA
        # was removed from client_ca is refused on a connection it already
        # held within this bound; in-flight calls get the same time to finish.
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", age_ms),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def gatekeeper_for(service: NodeService) -> Gatekeeper:
    """The policy in force at each call: a reloaded policy applies to the next one."""
    return Gatekeeper(
        lambda: service.config.policy, service.config.server.max_concurrent_per_identity
    )


def create_server(
    service: NodeService,
    address: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> RunningNode:
    """Bind ``address`` (the config's by default; port 0 picks a free port) and start.

    Health reports SERVING only if the dataset is loaded; ledger and records
    must be opened before calling this.
    """
    bind = address or service.config.server.address
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=service.config.server.max_workers, thread_name_prefix="tiaki-rpc"
        ),
        options=server_options(service.config.server.max_connection_age_seconds),
        maximum_concurrent_rpcs=service.config.server.max_workers * 8,
    )
    gatekeeper = gatekeeper_for(service)
    servicer = NodeServicer(service, gatekeeper)
    server.add_generic_rpc_handlers((_node_handlers(servicer),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port(bind)
    else:
        port = server.add_secure_port(bind, credentials)
    if port == 0:
        raise OSError(f"could not bind {bind}")
    running = RunningNode(
        server=server, port=port, service=service, health=health_servicer, servicer=servicer
    )
    running.set_serving(False)
    server.start()
    try:
        service.datasets.current  # noqa: B018  (raises if nothing is loaded)
        running.set_serving(True)
    except TiakiError:
        pass
    return running


__all__ = ["MAX_REQUEST_BYTES", "MAX_SECURE_REQUEST_BYTES", "RunningNode", "create_server"]
