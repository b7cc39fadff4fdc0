"""The hub's gRPC face, on ``grpc.aio``: thousands of held Pull and Collect calls, no thread each.

Every call is admitted by the caller's verified certificate alone (under
``insecure``, by the claim in the ``tiaki-coordinator`` metadata): a node may
pull and push only for the node id its certificate names, and only if that id
is on the roster; a coordinator may submit and collect only if it is listed.
The hub reads of an envelope only which node it is for and when it expires;
it never checks a signature (it holds no keys) because it trusts nothing it
relays: the node and the coordinator check each other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio

from coordinator.hub.config import HubConfig
from coordinator.hub.queue import WorkQueue
from tiaki.certs import CertError, identity_of
from tiaki.metadata import IDENTITY_METADATA_KEY
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import hub_pb2_grpc

log = logging.getLogger("tiaki.hub")

MAX_WAIT_SECONDS = 25  # under common load balancers' 60 s idle limit, with room to spare
RECHECK_SECONDS = 5.0  # a held call looks again this often (lease ends, expiry)
# A Collect with some outcomes ready waits this much longer for more, so that a
# question to many nodes is collected in a few calls rather than one per node.
BATCH_SECONDS = 0.02
# A Push can carry a node's whole ledger export (one outcome, every line).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
SERVICE_NAME = "tiaki.v1.Hub"


def server_options() -> list[tuple[str, Any]]:
    """Keepalive the nodes' pings can meet without a GOAWAY ("too_many_pings").

    Nodes ping every 30 s (see ``node.hub_link``); the hub accepts pings as
    often as every 20 s with or without calls in flight, so a node's ping never
    counts as abuse, and pings itself every 60 s to find dead peers.
    """
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=4096)
def _certificate_identity(pem: bytes) -> str | None:
    """The identity a verified peer certificate names; parsed once per certificate."""
    try:
        return identity_of(pem)
    except (CertError, ValueError):
        return None


def _peer_identity(context: grpc.aio.ServicerContext, insecure: bool) -> str:
    auth = context.auth_context()
    if auth.get("transport_security_type") == [b"ssl"]:
        identity = _certificate_identity((auth.get("x509_pem_cert") or [b""])[0])
        if identity is None:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, "your certificate names no identity")
        return identity
    if insecure:
        for key, value in context.invocation_metadata() or ():
            if key == IDENTITY_METADATA_KEY and isinstance(value, str) and value.isprintable():
                return value.strip()[:128]
    raise Refused(grpc.StatusCode.PERMISSION_DENIED, "the hub admits callers by certificate")


@dataclass(eq=False)  # each held call is its own: compared and hashed by identity
class _Collector:
    """One held Collect: woken when an outcome it waits for is pushed, and told which."""

    event: asyncio.Event
    pushed: set[str]


@dataclass
class _Waiters:
    """What wakes held calls: an event per node (new work), collectors per work id."""

    nodes: dict[str, asyncio.Event] = field(default_factory=dict)
    work: dict[str, set[_Collector]] = field(default_factory=dict)
    polling: dict[str, int] = field(default_factory=dict)

    def node(self, node_id: str) -> asyncio.Event:
        return self.nodes.setdefault(node_id, asyncio.Event())


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(0.0, seconds))


class HubServicer(hub_pb2_grpc.HubServicer):  # type: ignore[misc]
    def __init__(self, config: HubConfig, queue: WorkQueue) -> None:
        self._config = config
        self._queue = queue
        self._roster = frozenset(config.nodes)
        self._coordinators = frozenset(config.coordinators)
        self._waiters = _Waiters()

    # ------------------------------------------------------------ admission

    def _node(self, context: grpc.aio.ServicerContext) -> str:
        identity = _peer_identity(context, self._config.insecure)
        if identity not in self._roster:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity!r} is not a node on this hub's roster",
            )
        return identity

    def _coordinator(self, context: grpc.aio.ServicerContext) -> str:
        identity = _peer_identity(context, self._config.insecure)
        if identity not in self._coordinators:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{identity!r} is not a coordinator this hub admits",
            )
        return identity

    # ------------------------------------------------------------ nodes

    async def Pull(self, request: hub.PullRequest, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> hub.PullResponse:
            node_id = self._node(context)
            for pushed in request.outcomes:  # an unknown item is the node's stale copy: no error
                self._complete(node_id, pushed)
            wait = min(request.wait_seconds, MAX_WAIT_SECONDS)
            limit = min(request.max_items or self._config.max_items, self._config.max_items)
            deadline = time.monotonic() + wait
            event = self._waiters.node(node_id)
            self._waiters.polling[node_id] = self._waiters.polling.get(node_id, 0) + 1
            try:
                while True:
                    event.clear()
                    leased = self._queue.lease(node_id, self._config.lease_seconds, limit)
                    left = deadline - time.monotonic()
                    if leased or left <= 0:
                        break
                    await _wait(event, min(left, RECHECK_SECONDS))
            finally:
                self._waiters.polling[node_id] -= 1
            return hub.PullResponse(
                items=[
                    hub.WorkItem(
                        work_id=item.work_id,
                        attempt=item.attempt,
                        envelope=hub.SignedEnvelope.FromString(item.envelope),
                    )
                    for item in leased
                ]
            )

        return await _answer(context, "Pull", run)

    async def Push(self, request: hub.PushRequest, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> hub.PushResponse:
            node_id = self._node(context)
            if not self._complete(node_id, request):
                raise Refused(
                    grpc.StatusCode.NOT_FOUND,
                    f"no work item {request.work_id[:64]!r} for {node_id!r}",
                )
            return hub.PushResponse()

        return await _answer(context, "Push", run)

    def _complete(self, node_id: str, pushed: hub.PushRequest) -> bool:
        """Keep a node's outcome and wake whoever collects it; False if not its item."""
        data = pushed.outcome.SerializeToString(deterministic=True)
        if not self._queue.complete(pushed.work_id, node_id, data):
            return False
        for collector in self._waiters.work.get(pushed.work_id, ()):
            collector.pushed.add(pushed.work_id)
            collector.event.set()
        return True

    # ------------------------------------------------------------ coordinators

    async def Submit(self, request: hub.SubmitRequest, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> hub.SubmitResponse:
            self._coordinator(context)
            items = []
            for signed in request.envelopes:
                try:
                    envelope = hub.Envelope.FromString(signed.envelope)
                except DecodeError:
                    raise Refused(
                        grpc.StatusCode.INVALID_ARGUMENT, "an envelope is not a tiaki.v1.Envelope"
                    ) from None
                if envelope.node_id not in self._roster:
                    raise Refused(
                        grpc.StatusCode.NOT_FOUND,
                        f"{envelope.node_id[:64]!r} is not a node on this hub's roster",
                    )
                work_id = hashlib.sha256(signed.envelope).hexdigest()
                items.append(
                    (work_id, envelope.node_id, signed.SerializeToString(), envelope.not_after)
                )
            self._queue.submit(items)
            for _, node_id, _, _ in items:
                self._waiters.node(node_id).set()
            return hub.SubmitResponse(work_ids=[w for w, _, _, _ in items])

        return await _answer(context, "Submit", run)

    async def Collect(self, request: hub.CollectRequest, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> hub.CollectResponse:
            self._coordinator(context)
            wait = min(request.wait_seconds, MAX_WAIT_SECONDS)
            deadline = time.monotonic() + wait
            work_ids = list(dict.fromkeys(request.work_ids))
            collector = _Collector(asyncio.Event(), set())
            for w in work_ids:
                self._waiters.work.setdefault(w, set()).add(collector)
            try:
                # The first look, and every RECHECK_SECONDS, is at every item (an expiry
                # sets no event); in between only at the items whose outcome came in.
                look = work_ids
                ready: list[hub.Collected] = []
                first_ready: float | None = None
                while True:
                    ready += [c for c in (self._collected(w) for w in look) if c is not None]
                    now = time.monotonic()
                    if ready and first_ready is None:
                        first_ready = now
                    complete = len(ready) == len(work_ids)
                    batched = first_ready is not None and now - first_ready >= BATCH_SECONDS
                    if complete or batched or now >= deadline or not work_ids:
                        return hub.CollectResponse(ready=ready)
                    collector.event.clear()
                    timeout = min(deadline - now, RECHECK_SECONDS)
                    if first_ready is not None:
                        timeout = min(timeout, first_ready + BATCH_SECONDS - now)
                    await _wait(collector.event, timeout)
                    if collector.pushed:
                        look, collector.pushed = sorted(collector.pushed), set()
                    elif first_ready is None:
                        look = work_ids
                    else:
                        look = []
            finally:
                for w in work_ids:
                    waiting = self._waiters.work.get(w)
                    if waiting is not None:
                        waiting.discard(collector)
                        if not waiting:
                            del self._waiters.work[w]

        return await _answer(context, "Collect", run)

    def _collected(self, work_id: str) -> hub.Collected | None:
        item = self._queue.state(work_id)
        if item.state == "done" and item.outcome is not None:
            return hub.Collected(
                work_id=work_id, outcome=hub.SignedOutcome.FromString(item.outcome)
            )
        if item.state == "expired":
            return hub.Collected(work_id=work_id, expired=True)
        if item.state == "unknown":
            return hub.Collected(work_id=work_id, unknown=True)
        return None

    async def ListNodes(
        self, request: hub.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def run() -> hub.ListNodesResponse:
            self._coordinator(context)
            return hub.ListNodesResponse(
                nodes=[
                    hub.HubNode(
                        node_id=n.node_id,
                        last_pull=int(n.last_pull or 0),
                        polling=self._waiters.polling.get(n.node_id, 0) > 0,
                        queued=n.waiting,
                    )
                    for n in self._queue.nodes(sorted(self._roster))
                ]
            )

        return await _answer(context, "ListNodes", run)


async def _answer(
    context: grpc.aio.ServicerContext, what: str, run: Callable[[], Awaitable[Any]]
) -> Any:
    try:
        return await run()
    except Refused as exc:
        log.info("%s refused: %s", what, exc.message)
        await context.abort(exc.code, exc.message)
    except Exception:
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, "the hub failed; see its log")
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


@dataclass
class RunningHub:
    server: grpc.aio.Server
    port: int
    queue: WorkQueue
    health: Any
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)
        self.queue.close()


async def start_hub(
    config: HubConfig,
    address: str | None = None,
    credentials: grpc.ServerCredentials | None = None,
    health_address: str | None = None,
) -> RunningHub:
    """Bind ``address`` (the config's by default; port 0 picks one), open the queue, start.

    The standard grpc.health.v1 service answers on the hub's port (behind its
    mutual TLS) and, with ``health_address``, in plaintext on that loopback
    address too, for a container's or a monitor's health check.
    """
    queue = WorkQueue(config.queue)
    server = grpc.aio.server(options=server_options())
    hub_pb2_grpc.add_HubServicer_to_server(HubServicer(config, queue), server)
    health = aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bind = address or config.address
    port = (
        server.add_secure_port(bind, credentials)
        if credentials is not None
        else server.add_insecure_port(bind)
    )
    if port == 0:
        queue.close()
        raise OSError(f"could not bind {bind}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = RunningHub(server, port, queue, health)
    if health_address is not None:
        running.health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, running.health_server)
        running.health_port = running.health_server.add_insecure_port(health_address)
        await running.health_server.start()
    return running
