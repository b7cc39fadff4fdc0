"""A typed client for one node: contract types in, contract types out.

The coordinator's edge, and its only module that speaks protobuf or gRPC's
status codes: every reply is converted here (:mod:`tiaki.convert`), and every
failed call becomes the typed error it stands for (:mod:`tiaki.wire_errors`),
with the node's address on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import grpc
from google.protobuf.message import Message

from coordinator.config import FederationConfig, FederationConfigError, NodeEntry
from tiaki.answer import Answer
from tiaki.budget import BudgetStatus
from tiaki.certs import CertError, tls_files
from tiaki.convert import (
    answer_from_proto,
    budget_from_proto,
    node_info_from_proto,
    node_plan_from_proto,
    query_to_proto,
)
from tiaki.errors import TiakiError
from tiaki.files import is_loopback
from tiaki.metadata import IDENTITY_METADATA_KEY
from tiaki.node_info import NodeInfo, NodePlan
from tiaki.query import Query
from tiaki.secagg.session import KeyAdvert, MaskedInput, Reveal, SealedShares, SessionParameters
from tiaki.secagg.wire import (
    advert_from_proto,
    advert_to_proto,
    masked_input_from_proto,
    reveal_from_proto,
    sealed_from_proto,
    sealed_to_proto,
    session_to_proto,
)
from tiaki.v1 import node_pb2 as pb
from tiaki.v1 import node_pb2_grpc
from tiaki.wire_errors import from_rpc_error

T = TypeVar("T")
M = TypeVar("M", bound=Message)


def new_query_id() -> str:
    """One id per question, reused on every retry of it."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class NodeCall(Generic[T]):
    """One unary Node RPC: its request, and how its reply becomes a contract type.

    Described rather than made, so that a fan-out can start many at once
    (:meth:`NodeClient.start`) and a client can make one (:meth:`NodeClient.run`)
    with the same code.
    """

    method: str
    request: Message
    reply: type[Message]
    decode: Callable[[Any], T]


def info_call() -> NodeCall[NodeInfo]:
    return NodeCall("GetInfo", pb.GetInfoRequest(), pb.NodeInfo, node_info_from_proto)


def budget_call() -> NodeCall[BudgetStatus]:
    return NodeCall("GetBudget", pb.GetBudgetRequest(), pb.BudgetReport, budget_from_proto)


def plan_call(query: Query, query_id: str = "") -> NodeCall[NodePlan]:
    """What ``query`` would cost the node (spends nothing); with ``query_id``, whether
    asking under it would replay an answer this coordinator already holds (free)."""
    request = query_to_proto(query, query_id=query_id, analyst="")
    return NodeCall("Plan", request, pb.QueryPlan, node_plan_from_proto)


def query_call(query: Query, *, query_id: str, analyst: str) -> NodeCall[Answer]:
    return raw_query_call(query_to_proto(query, query_id=query_id, analyst=analyst))


def raw_query_call(request: pb.QueryRequest) -> NodeCall[Answer]:
    return NodeCall("Query", request, pb.QueryResponse, answer_from_proto)


class Transport(Protocol):
    """How a NodeClient reaches its node: dialled directly, or through a hub."""

    def unary(self, method: str, request: Message, reply: type[M], timeout: float) -> M: ...

    def stream(
        self, method: str, request: Message, reply: type[M], timeout: float
    ) -> Iterator[M]: ...

    def close(self) -> None: ...


@runtime_checkable
class StartingTransport(Protocol):
    """A transport that starts a call and says later how it ended (a hub's: every call in
    flight shares one Submit and one Collect, and none needs a thread to wait)."""

    def begin(
        self,
        method: str,
        request: Message,
        reply: type[M],
        timeout: float,
        then: Callable[[M | BaseException], None],
    ) -> None: ...


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    server_name: str | None,
    options: Sequence[tuple[str, object]],
) -> grpc.Channel:
    """A channel to ``address``: mutual TLS expecting ``server_name`` in the peer's
    certificate, or plaintext (loopback development) without ``credentials``."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    named = [*options, ("grpc.ssl_target_name_override", server_name)] if server_name else options
    return grpc.secure_channel(address, credentials, options=list(named))


class DirectTransport:
    """A gRPC channel to the node's own port (mutual TLS, or a loopback claim)."""

    def __init__(
        self,
        address: str,
        identity: str,
        credentials: grpc.ChannelCredentials | None,
        server_name: str | None,
    ) -> None:
        self._metadata = ((IDENTITY_METADATA_KEY, identity),)
        options = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000)]
        self._channel = open_channel(address, credentials, server_name, options)
        self._stub = node_pb2_grpc.NodeStub(self._channel)

    def unary(self, method: str, request: Message, reply: type[M], timeout: float) -> M:
        result: M = getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        return result

    def stream(self, method: str, request: Message, reply: type[M], timeout: float) -> Iterator[M]:
        call = getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()


class NodeClient:
    """Talks to one node. Errors arrive as :class:`tiaki.errors.TiakiError` types."""

    def __init__(
        self,
        address: str,
        *,
        identity: str = "coordinator",
        timeout: float = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
        transport: Transport | None = None,
    ) -> None:
        """``credentials`` for mutual TLS; ``server_name`` is the identity the node's
        certificate must carry (checked in the handshake; anything else is refused).
        ``transport`` replaces the direct channel (a hub's, see coordinator.hub_client);
        ``address`` then only names the node in errors."""
        self.address = address
        self.timeout = timeout
        self._transport: Transport = transport or DirectTransport(
            address, identity, credentials, server_name
        )
        # Looked up once: a check against a runtime protocol is slow, and asked per call.
        self._starts = isinstance(self._transport, StartingTransport)

    def _call(self, method: str, request: Message, reply: type[M]) -> M:
        try:
            return self._transport.unary(method, request, reply, self.timeout)
        except (grpc.RpcError, TiakiError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> TiakiError:
        """A failed call as the typed error it stands for, naming this node."""
        if isinstance(exc, grpc.RpcError):
            return from_rpc_error(exc, self.address)
        assert isinstance(exc, TiakiError)
        exc.node = self.address
        return exc

    def run(self, call: NodeCall[T]) -> T:
        return call.decode(self._call(call.method, call.request, call.reply))

    @property
    def starts_without_a_thread(self) -> bool:
        """Whether :meth:`start` can be used: the transport starts calls itself."""
        return self._starts

    def start(self, call: NodeCall[T]) -> Future[T]:
        """The call under way, without a thread: for a transport that can (a hub's).
        The future holds the decoded reply or the typed error, as :meth:`run` would."""
        transport = self._transport
        assert isinstance(transport, StartingTransport)  # see starts_without_a_thread
        result: Future[T] = Future()

        def settled(reply: Any) -> None:
            if isinstance(reply, (grpc.RpcError, TiakiError)):
                result.set_exception(self._error(reply))
            elif isinstance(reply, BaseException):  # not the node's word: the caller's to see
                result.set_exception(reply)
            else:
                try:
                    result.set_result(call.decode(reply))
                except Exception as exc:  # a reply that does not convert
                    result.set_exception(exc)

        transport.begin(call.method, call.request, call.reply, self.timeout, settled)
        return result

    def info(self) -> NodeInfo:
        return self.run(info_call())

    def budget(self) -> BudgetStatus:
        return self.run(budget_call())

    def plan(self, query: Query, query_id: str = "") -> NodePlan:
        """The node's own account of what ``query`` would cost; spends nothing.

        With ``query_id``, the plan also says whether asking under that id
        would replay an answer this coordinator already holds (free).
        """
        return self.run(plan_call(query, query_id))

    def query(self, query: Query, *, query_id: str, analyst: str) -> Answer:
        return self.run(query_call(query, query_id=query_id, analyst=analyst))

    def query_raw(self, request: pb.QueryRequest) -> Answer:
        """Send a request exactly as given (tests use it to send malformed ones)."""
        return self.run(raw_query_call(request))

    def export_ledger(self, from_seq: int = 0) -> Iterator[str]:
        """The node's signed ledger export, one line at a time (each without its newline).

        ``from_seq`` 0 or 1 asks for the whole ledger. The client's timeout
        bounds the whole stream. Lines are yielded exactly as received: joined
        with newlines they are the bytes the node signed. Stopping early
        cancels the call.
        """
        lines = self._transport.stream(
            "ExportLedger",
            pb.ExportLedgerRequest(from_seq=from_seq),
            pb.ExportLedgerLine,
            self.timeout,
        )
        try:
            for message in lines:
                yield message.line
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None
        except TiakiError as exc:
            exc.node = self.address
            raise

    # ------------------------------------------------------------ secure sums
    # These five make a NodeClient a coordinator.secure_sum.SessionLink.

    def advertise(self, params: SessionParameters) -> KeyAdvert:
        request = pb.SecureAdvertiseRequest(session=session_to_proto(params))
        return advert_from_proto(self._call("SecureAdvertise", request, pb.KeyAdvert))

    def share_keys(
        self, params: SessionParameters, adverts: Sequence[KeyAdvert]
    ) -> tuple[SealedShares, ...]:
        request = pb.SecureShareKeysRequest(
            session=session_to_proto(params), adverts=[advert_to_proto(a) for a in adverts]
        )
        reply = self._call("SecureShareKeys", request, pb.SecureShareKeysResponse)
        return tuple(sealed_from_proto(s) for s in reply.shares)

    def masked_input(
        self, params: SessionParameters, sealed: Sequence[SealedShares]
    ) -> MaskedInput:
        request = pb.SecureMaskedInputRequest(
            session=session_to_proto(params), shares=[sealed_to_proto(s) for s in sealed]
        )
        return masked_input_from_proto(self._call("SecureMaskedInput", request, pb.MaskedInput))

    def consistency(self, params: SessionParameters, survivors: Sequence[int]) -> str:
        request = pb.SecureConsistencyRequest(
            session=session_to_proto(params), survivors=list(survivors)
        )
        reply = self._call("SecureConsistency", request, pb.SurvivorSignature)
        return str(reply.signature)

    def unmask(
        self, params: SessionParameters, survivors: Sequence[int], signatures: Mapping[int, str]
    ) -> Reveal:
        request = pb.SecureUnmaskRequest(
            session=session_to_proto(params),
            survivors=list(survivors),
            signatures=[
                pb.SurvivorSignature(index=i, signature=s) for i, s in sorted(signatures.items())
            ],
        )
        return reveal_from_proto(self._call("SecureUnmask", request, pb.Reveal))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def channel_credentials(
    config: FederationConfig, entries: Sequence[NodeEntry]
) -> grpc.ChannelCredentials | None:
    """Mutual-TLS credentials from the federation file, or None in insecure development mode."""
    if config.insecure:
        remote = [e.name for e in entries if e.address is not None and not is_loopback(e.address)]
        if config.hub is not None and not is_loopback(config.hub.address):
            remote.append("the hub")
        if remote:
            raise FederationConfigError(
                f"insecure mode talks only to loopback nodes; {', '.join(remote)} is not: "
                "configure tls in the federation file"
            )
        return None
    if config.tls is None:
        raise FederationConfigError(
            "the federation file has no tls section (ca, cert, key); add it, or set "
            "'insecure: true' for loopback development"
        )
    try:
        files = tls_files(config.tls.cert, config.tls.key, config.tls.ca)
    except CertError as exc:
        raise FederationConfigError(f"tls: {exc}") from None
    return grpc.ssl_channel_credentials(
        root_certificates=files.root_certificates,
        private_key=files.private_key,
        certificate_chain=files.cert_chain,
    )


# What gRPC's connection errors mean, as far as the client can tell them apart:
# (words in gRPC's own message, what to tell the analyst). First match wins.
# gRPC gives no structured cause for a failed connection, only these words;
# a node's refusals never come this way (they carry a reason code).
_CONNECTION_FAILURES = (
    ("Connection refused", "connection refused: nothing listens at that address (the node "
     "is stopped, or the address or port is wrong)"),
    ("No route to host", "no route to the node's host (network or firewall)"),
    ("Network is unreachable", "no route to the node's host (network or firewall)"),
    ("DNS resolution failed", "the node's host name does not resolve"),
    ("certificate has expired", "the node's certificate has expired: the NGO must renew it"),
    ("CERTIFICATE_VERIFY_FAILED", "the node's certificate is not trusted: it was not issued by "
     "the CA in the federation file's tls.ca"),
    ("Hostname Verification", "the node's certificate does not carry the expected name: check "
     "the node's server_name in the federation file against its certificate"),
    ("Peer name", "the node's certificate does not carry the expected name: check the node's "
     "server_name in the federation file against its certificate"),
    ("Socket closed", "the node closed the connection at the TLS handshake: most likely it "
     "does not accept our certificate (issued by a CA it does not trust, or expired); the "
     "node's log says which"),
    ("CERTIFICATE_REQUIRED", "the node requires a client certificate and did not accept ours"),
    ("BAD_CERTIFICATE", "the node did not accept our certificate"),
    ("UNKNOWN_CA", "the node does not trust the CA that issued our certificate"),
)  # fmt: skip


def connection_failure(message: str) -> str:
    """Why a connection failed, in words, followed by gRPC's own last error."""
    detail = message.rpartition("last error: ")[2].strip() or message.strip()
    for words, meaning in _CONNECTION_FAILURES:
        if words in message:
            return f"unreachable: {meaning} ({detail})"
    return f"unreachable: {detail}"
