"""A typed client for one node: contract types in, contract types out.

The coordinator's edge, and its only module that speaks protobuf or gRPC's
status codes: every reply is converted here (:mod:`tiaki.convert`), and every
failed call becomes the typed error it stands for (:mod:`tiaki.wire_errors`),
with the node's address on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Protocol, TypeVar

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


class Transport(Protocol):
    """How a NodeClient reaches its node: dialled directly, or through a hub."""

    def unary(self, method: str, request: Message, reply: type[M], timeout: float) -> M: ...

    def stream(
        self, method: str, request: Message, reply: type[M], timeout: float
    ) -> Iterator[M]: ...

    def close(self) -> None: ...


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

    def _call(self, method: str, request: Message, reply: type[M]) -> M:
        try:
            return self._transport.unary(method, request, reply, self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.address) from None
        except TiakiError as exc:
            exc.node = self.address
            raise

    def info(self) -> NodeInfo:
        return node_info_from_proto(self._call("GetInfo", pb.GetInfoRequest(), pb.NodeInfo))

    def budget(self) -> BudgetStatus:
        return budget_from_proto(self._call("GetBudget", pb.GetBudgetRequest(), pb.BudgetReport))

    def plan(self, query: Query, query_id: str = "") -> NodePlan:
        """The node's own account of what ``query`` would cost; spends nothing.

        With ``query_id``, the plan also says whether asking under that id
        would replay an answer this coordinator already holds (free).
        """
        request = query_to_proto(query, query_id=query_id, analyst="")
        return node_plan_from_proto(self._call("Plan", request, pb.QueryPlan))

    def query(self, query: Query, *, query_id: str, analyst: str) -> Answer:
        request = query_to_proto(query, query_id=query_id, analyst=analyst)
        return self.query_raw(request)

    def query_raw(self, request: pb.QueryRequest) -> Answer:
        """Send a request exactly as given (tests use it to send malformed ones)."""
        return answer_from_proto(self._call("Query", request, pb.QueryResponse))

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
