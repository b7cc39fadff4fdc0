"""Reaching a node through the hub: the same calls, as signed envelopes and signed outcomes.

A :class:`HubTransport` is what a :class:`~coordinator.client.NodeClient`
uses for a node marked ``via: hub``. Each call is sealed in an envelope
signed with this coordinator's signing key (the one its ledger exports are
signed with, which the NGO pinned in its grant), submitted to the hub, and
its outcome collected and opened with the node's pinned ledger key. The
outcome must answer exactly the envelope sent; a refusal comes back as the
status the node would have sent directly, and turns into the same typed
error. An outcome that does not check is an error of its own: the hub (or
someone on the way) changed it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from coordinator.client import open_channel
from coordinator.hub_dispatch import HubDispatcher
from tiaki.envelopes import EnvelopeError, open_outcome, seal_envelope, work_id_of
from tiaki.errors import (
    DeadlineExceededError,
    NodeUnreachableError,
    RequestExpiredError,
)
from tiaki.metadata import IDENTITY_METADATA_KEY
from tiaki.signing import SigningKey
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import hub_pb2_grpc
from tiaki.wire_errors import from_rpc_error

M = TypeVar("M", bound=Message)
T = TypeVar("T")
# The dispatcher fails a wait at its deadline; this is a backstop beyond it, never reached
# unless the dispatcher itself has stopped.
SETTLE_SLACK_SECONDS = 5.0


class RelayedStatus(grpc.RpcError):  # type: ignore[misc]
    """A node's refusal relayed in an outcome, shaped like the failed call it stands for."""

    def __init__(self, outcome: hub.Outcome) -> None:
        super().__init__(outcome.message)
        self._outcome = outcome

    def code(self) -> grpc.StatusCode:
        for code in grpc.StatusCode:
            if code.value[0] == self._outcome.code:
                return code
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return str(self._outcome.message)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        status = bytes(self._outcome.status)
        return (("grpc-status-details-bin", status),) if status else ()


class HubChannel:
    """One connection to the hub, shared by every node reached through it."""

    def __init__(
        self,
        address: str,
        *,
        identity: str,
        credentials: grpc.ChannelCredentials | None,
        server_name: str | None,
    ) -> None:
        self.address = address
        self._metadata = ((IDENTITY_METADATA_KEY, identity),)
        options: list[tuple[str, object]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        self._channel = open_channel(address, credentials, server_name, options)
        self.stub = hub_pb2_grpc.HubStub(self._channel)
        self.dispatcher = HubDispatcher(self.call, self._collect_future)

    def _collect_future(self, request: hub.CollectRequest, timeout: float) -> Any:
        return self.stub.Collect.future(request, timeout=timeout, metadata=self._metadata)

    def call(self, method: str, request: Message, timeout: float) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, f"hub {self.address}") from None

    def nodes(self, timeout: float = 10.0) -> Sequence[hub.HubNode]:
        reply = self.call("ListNodes", hub.ListNodesRequest(), timeout)
        return tuple(reply.nodes)

    def close(self) -> None:
        self.dispatcher.close()
        self._channel.close()


class HubTransport:
    """One node's calls through the hub: seal, submit, collect, open, decode."""

    def __init__(
        self, channel: HubChannel, *, node_id: str, node_key: str, signer: SigningKey
    ) -> None:
        self._hub = channel
        self._node_id = node_id
        self._node_key = node_key
        self._signer = signer

    def begin(
        self,
        method: str,
        request: Message,
        reply: type[M],
        timeout: float,
        then: Callable[[M | BaseException], None],
    ) -> None:
        """Start the call: sealed and queued at once; ``then`` is called once with the
        node's reply, or the error it stands for. No thread waits for it."""
        self._begin(method, request, timeout, lambda o: self._reply(o, reply), then)

    def unary(self, method: str, request: Message, reply: type[M], timeout: float) -> M:
        done: Future[M] = Future()
        self.begin(method, request, reply, timeout, lambda r: _settle(done, r))
        return self._waited(done, timeout)

    def stream(self, method: str, request: Message, reply: type[M], timeout: float) -> Iterator[M]:
        done: Future[hub.Outcome] = Future()
        self._begin(method, request, timeout, lambda o: o, lambda r: _settle(done, r))
        outcome = self._waited(done, timeout)
        if outcome.code != 0:
            raise RelayedStatus(outcome)
        for data in outcome.replies:
            yield reply.FromString(data)

    def _begin(
        self,
        method: str,
        request: Message,
        timeout: float,
        convert: Callable[[hub.Outcome], Any],
        then: Callable[[Any], None],
    ) -> None:
        issued = int(time.time())
        deadline = time.monotonic() + timeout
        signed = seal_envelope(
            self._signer,
            node_id=self._node_id,
            method=method,
            payload=request.SerializeToString(),
            issued_at=issued,
            not_after=issued + max(1, int(timeout)),
        )
        work_id = work_id_of(signed)

        def ask() -> None:
            left = deadline - time.monotonic()
            if left <= 0:
                then(self._no_outcome())
                return
            self._hub.dispatcher.start(signed, work_id, left, arrived)

        def arrived(ready: hub.Collected | BaseException) -> None:
            if isinstance(ready, TimeoutError):
                then(self._no_outcome())
                return
            if isinstance(ready, BaseException):
                then(ready)
                return
            if ready.unknown:  # the hub lost it (a power cut): the same envelope again
                ask()
                return
            try:
                converted = convert(self._opened(ready, signed))
            except Exception as exc:  # the call's own error, for whoever waits on it
                then(exc)
                return
            then(converted)

        ask()

    def _waited(self, done: Future[T], timeout: float) -> T:
        try:
            return done.result(timeout + SETTLE_SLACK_SECONDS)
        except TimeoutError:
            raise self._no_outcome() from None

    def _no_outcome(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"no outcome from {self._node_id} through the hub before the deadline "
            "(the node may be offline; the hub keeps the request until it expires)"
        )

    def _opened(self, ready: hub.Collected, signed: hub.SignedEnvelope) -> hub.Outcome:
        if ready.expired:
            raise RequestExpiredError(
                f"expired: {self._node_id} did not take the request before its "
                "deadline; nothing was done or spent"
            )
        try:
            return open_outcome(ready.outcome, self._node_key, signed)
        except EnvelopeError as exc:
            raise NodeUnreachableError(
                f"the hub relayed an outcome that does not check ({exc.message}); "
                "nothing from it was used"
            ) from None

    def _reply(self, outcome: hub.Outcome, reply: type[M]) -> M:
        if outcome.expired:
            raise RequestExpiredError(
                f"expired: {self._node_id} refused the request as past its deadline "
                f"({outcome.message}); nothing was done or spent"
            )
        if outcome.code != 0:
            raise RelayedStatus(outcome)
        if len(outcome.replies) != 1:
            raise NodeUnreachableError("the node's relayed outcome has no single reply")
        try:
            return reply.FromString(outcome.replies[0])
        except DecodeError:
            raise NodeUnreachableError("the node's relayed reply does not decode") from None

    def close(self) -> None:
        """The hub's channel is shared: the federation closes it."""


def _settle(future: Future[Any], outcome: Any) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


__all__ = ["HubChannel", "HubTransport", "RelayedStatus"]
