"""A typed client for one node: contract types in, contract types out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import TracebackType

import grpc

from tiaki.answer import Answer
from tiaki.budget import BudgetStatus
from tiaki.convert import answer_from_proto, budget_from_proto, query_to_proto
from tiaki.errors import from_rpc_error
from tiaki.metadata import IDENTITY_METADATA_KEY
from tiaki.query import Query
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc


def new_query_id() -> str:
    """One id per question, reused on every retry of it."""
    return uuid.uuid4().hex


class NodeClient:
    """Talks to one node. Errors arrive as :class:`tiaki.errors.RemoteError`."""

    def __init__(
        self,
        address: str,
        *,
        identity: str = "coordinator",
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        """``credentials`` for mutual TLS; ``server_name`` is the identity the node's
        certificate must carry (checked in the handshake; anything else is refused)."""
        self.address = address
        self.timeout = timeout
        self._metadata = ((IDENTITY_METADATA_KEY, identity),)
        options: list[tuple[str, object]] = [
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(address, credentials, options=options)
        self._stub = node_pb2_grpc.NodeStub(self._channel)

    def info(self) -> pb.NodeInfo:
        try:
            info: pb.NodeInfo = self._stub.GetInfo(
                pb.GetInfoRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return info

    def budget(self) -> BudgetStatus:
        try:
            report = self._stub.GetBudget(
                pb.GetBudgetRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return budget_from_proto(report)

    def plan(self, query: Query, query_id: str = "") -> pb.QueryPlan:
        """The node's own account of what ``query`` would cost; spends nothing.

        With ``query_id``, the plan also says whether asking under that id
        would replay an answer this coordinator already holds (free).
        """
        request = query_to_proto(query, query_id=query_id, analyst="")
        try:
            plan: pb.QueryPlan = self._stub.Plan(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return plan

    def query(self, query: Query, *, query_id: str, analyst: str) -> Answer:
        request = query_to_proto(query, query_id=query_id, analyst=analyst)
        return self.query_raw(request)

    def query_raw(self, request: pb.QueryRequest) -> Answer:
        try:
            response = self._stub.Query(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return answer_from_proto(response)

    def export_ledger(self, from_seq: int = 0) -> Iterator[str]:
        """The node's signed ledger export, one line at a time (each without its newline).

        ``from_seq`` 0 or 1 asks for the whole ledger. The client's timeout
        bounds the whole stream. Lines are yielded exactly as received: joined
        with newlines they are the bytes the node signed. Stopping early
        cancels the call.
        """
        call = self._stub.ExportLedger(
            pb.ExportLedgerRequest(from_seq=from_seq),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        try:
            for message in call:
                yield message.line
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
