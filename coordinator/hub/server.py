"""The hub's gRPC face, on ``grpc.aio``: thousands of open node calls, no thread each.

Every call is admitted by the caller's verified certificate alone (under
``insecure``, by the claim in the ``tiaki-coordinator`` metadata): a node may
connect only as the node id its certificate names, and only if that id is on
the roster; a coordinator may submit and collect only if it is listed.
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
# Outcomes that arrive within this long of each other are stored in one commit.
STORE_BATCH_SECONDS = 0.002
SEEN_SECONDS = 30.0  # how fresh ``tiaki-hub status`` (which reads the queue file) is
TICK_SECONDS = 1.0  # heartbeats and looks at the queue are this punctual
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
    """One held Collect: woken when an outcome it waits for is stored, and handed it."""

    event: asyncio.Event
    pushed: dict[str, hub.Collected]


@dataclass(eq=False)
class _NodeLink:
    """One node's open Connect call: what it will take, what to send it, what wakes it."""

    node_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    credit: int = 0  # items the node will take, beyond those on their way
    ready: list[hub.WorkItem] = field(default_factory=list)  # leased, not yet written
    sent: set[str] = field(default_factory=set)  # written to the node, no outcome yet
    stored: list[str] = field(default_factory=list)  # outcomes stored, not yet acknowledged
    look: bool = True  # the queue may hold items for the node
    closed: bool = False
    heartbeat_due: float = 0.0  # monotonic: write (if only a heartbeat) by then
    look_due: float = 0.0  # monotonic: look at the queue again (lease ends) by then


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()


class HubServicer(hub_pb2_grpc.HubServicer):  # type: ignore[misc]
    def __init__(self, config: HubConfig, queue: WorkQueue) -> None:
        self._config = config
        self._queue = queue
        self._roster = frozenset(config.nodes)
        self._coordinators = frozenset(config.coordinators)
        self._links: dict[str, list[_NodeLink]] = {}
        self._collectors: dict[str, set[_Collector]] = {}
        self._storing: list[tuple[_NodeLink, hub.NodeOutcome]] = []
        self._store_scheduled = False

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

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            node_id = self._node(context)
        except Refused as exc:
            log.info("Connect refused: %s", exc.message)
            await context.abort(exc.code, exc.message)
        first = await context.read()
        if first is grpc.aio.EOF:
            return
        heartbeat = min(first.heartbeat_seconds or MAX_WAIT_SECONDS, MAX_WAIT_SECONDS)
        link = _NodeLink(node_id)
        # A node holds one call: a new one means the old is dead (a connection that went
        # silent, a restart). The old one is ended, and what it held goes out again now
        # rather than when its lease runs out.
        for old in self._links.get(node_id, ()):
            old.closed = True
            old.wake.set()
        self._links.setdefault(node_id, []).append(link)
        self._queue.seen([node_id])
        self._take(link, first)
        reader = asyncio.create_task(self._read(link, context))
        try:
            await self._send(link, context, heartbeat)
        except (grpc.aio.AbortError, grpc.aio.UsageError):
            raise  # the call was ended under us (the node went, or the hub stops)
        except Exception:
            log.exception("Connect for %s failed", node_id)
            await context.abort(grpc.StatusCode.INTERNAL, "the hub failed; see its log")
        finally:
            reader.cancel()
            self._links[node_id].remove(link)
            if not self._links[node_id]:
                del self._links[node_id]
            # Items it was given and never answered go back in the queue at once. Safe: the
            # node runs items one at a time on its one call, so one it got before the call
            # ended has its outcome in the node's inbox (sent when it is back), and a
            # repeat is answered from there.
            unanswered = [item.work_id for item in link.ready] + sorted(link.sent)
            if unanswered:
                self._queue.release(unanswered)
            self._queue.seen([node_id])

    async def tick(self) -> None:
        """Once a second: wake each link whose heartbeat or look at the queue is due (one
        timer for all, not one per call); every SEEN_SECONDS, note the connected nodes
        as seen, for ``tiaki-hub status``."""
        seen = time.monotonic()
        while True:
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            for links in self._links.values():
                for link in links:
                    if now >= link.heartbeat_due or (link.credit > 0 and now >= link.look_due):
                        link.wake.set()
            if now - seen >= SEEN_SECONDS and self._links:
                self._queue.seen(list(self._links))
                seen = now

    async def _read(self, link: _NodeLink, context: grpc.aio.ServicerContext) -> None:
        try:
            while (message := await context.read()) is not grpc.aio.EOF:
                self._take(link, message)
        finally:
            link.closed = True
            link.wake.set()

    def _take(self, link: _NodeLink, message: hub.NodeMessage) -> None:
        link.credit = min(link.credit + message.credit, self._config.max_items)
        if link.look:  # credit back, and the queue may hold more for it
            link.wake.set()
        if message.outcomes:
            # An unknown item is the node's stale copy: acknowledged, so it is dropped.
            self._storing += [(link, outcome) for outcome in message.outcomes]
            if not self._store_scheduled:
                self._store_scheduled = True
                asyncio.get_running_loop().call_later(STORE_BATCH_SECONDS, self._store)

    def _store(self) -> None:
        """Keep the outcomes that came in, in one commit; then acknowledge each to its node
        and hand it to whoever collects it."""
        batch, self._storing, self._store_scheduled = self._storing, [], False
        results = self._queue.complete(
            [
                (o.work_id, link.node_id, o.outcome.SerializeToString(deterministic=True))
                for link, o in batch
            ]
        )
        for (link, outcome), result in zip(batch, results, strict=True):
            link.stored.append(outcome.work_id)
            link.sent.discard(outcome.work_id)
            if result == "stored":
                ready = hub.Collected(work_id=outcome.work_id, outcome=outcome.outcome)
                for collector in self._collectors.get(outcome.work_id, ()):
                    collector.pushed[outcome.work_id] = ready
                    collector.event.set()

    async def _send(
        self, link: _NodeLink, context: grpc.aio.ServicerContext, heartbeat: float
    ) -> None:
        """Write work, acknowledgements and heartbeats to one node until its call ends."""
        await context.write(hub.HubMessage())  # at once: the node knows it is admitted
        # Due a tick early, as the tick may come up to a tick late: the node hears at
        # least every ``heartbeat`` seconds.
        every = max(TICK_SECONDS, heartbeat - TICK_SECONDS)
        link.heartbeat_due = time.monotonic() + every
        while not link.closed:
            link.wake.clear()
            now = time.monotonic()
            if link.credit > 0 and (link.look or now >= link.look_due):
                asked = link.credit
                leased = self._queue.lease(link.node_id, self._config.lease_seconds, asked)
                link.look, link.look_due = len(leased) == asked, now + RECHECK_SECONDS
                link.credit -= len(leased)
                link.ready += [
                    hub.WorkItem(
                        work_id=item.work_id,
                        attempt=item.attempt,
                        envelope=hub.SignedEnvelope.FromString(item.envelope),
                    )
                    for item in leased
                ]
            # Acknowledgements wait for the next message (work, or a heartbeat): one that
            # never comes costs only a repeat, which the node sends and the hub ignores.
            if link.ready or now >= link.heartbeat_due:
                message = hub.HubMessage(items=link.ready, stored=link.stored)
                link.sent.update(item.work_id for item in link.ready)
                link.ready, link.stored = [], []
                await context.write(message)
                link.heartbeat_due = time.monotonic() + every
                continue
            await link.wake.wait()  # by Submit, by the node's credit, by the tick, or closed

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
                items.append((work_id, envelope.node_id, signed, envelope.not_after))
            self._hand_out(items)
            return hub.SubmitResponse(work_ids=[w for w, _, _, _ in items])

        return await _answer(context, "Submit", run)

    def _hand_out(self, items: list[tuple[str, str, hub.SignedEnvelope, int]]) -> None:
        """Store the items in one commit, and send each at once to its node if it is
        connected and will take it; the rest wait in the queue for the node."""
        unique = list({item[0]: item for item in items}.values())
        handed: dict[str, _NodeLink] = {}
        for work_id, node_id, _, _ in unique:
            links = self._links.get(node_id, ())
            link = next((k for k in links if k.credit > 0 and not k.closed), None)
            if link is not None:
                link.credit -= 1
                handed[work_id] = link
        new = self._queue.submit(
            [(w, n, signed.SerializeToString(), a) for w, n, signed, a in unique],
            handed,
            self._config.lease_seconds,
        )
        for work_id, node_id, signed, _ in unique:
            link = handed.get(work_id)
            if link is not None and work_id in new:
                link.ready.append(hub.WorkItem(work_id=work_id, attempt=1, envelope=signed))
                link.wake.set()
                continue
            if link is not None:
                link.credit += 1  # known already: it stays as it was
            for waiting in self._links.get(node_id, ()):
                waiting.look = True
                waiting.wake.set()

    async def Collect(self, request: hub.CollectRequest, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> hub.CollectResponse:
            self._coordinator(context)
            wait = min(request.wait_seconds, MAX_WAIT_SECONDS)
            deadline = time.monotonic() + wait
            work_ids = list(dict.fromkeys(request.work_ids))
            collector = _Collector(asyncio.Event(), {})
            for w in work_ids:
                self._collectors.setdefault(w, set()).add(collector)
            try:
                # The first look, and every RECHECK_SECONDS until something is ready, is at
                # every item in the queue (an expiry wakes no one); in between, outcomes
                # are handed over as they are stored.
                ready = self._collected(work_ids)
                first_ready: float | None = None
                while True:
                    now = time.monotonic()
                    if ready and first_ready is None:
                        first_ready = now
                    complete = len(ready) == len(work_ids)
                    batched = first_ready is not None and now - first_ready >= BATCH_SECONDS
                    if complete or batched or now >= deadline or not work_ids:
                        return hub.CollectResponse(ready=list(ready.values()))
                    collector.event.clear()
                    timeout = min(deadline - now, RECHECK_SECONDS)
                    if first_ready is not None:
                        timeout = min(timeout, first_ready + BATCH_SECONDS - now)
                    await _wait(collector.event, timeout)
                    if collector.pushed:
                        ready.update(collector.pushed)
                        collector.pushed = {}
                    elif first_ready is None:
                        ready = self._collected(work_ids)
            finally:
                for w in work_ids:
                    waiting = self._collectors.get(w)
                    if waiting is not None:
                        waiting.discard(collector)
                        if not waiting:
                            del self._collectors[w]

        return await _answer(context, "Collect", run)

    def _collected(self, work_ids: list[str]) -> dict[str, hub.Collected]:
        ready = {}
        for work_id, item in self._queue.states(work_ids).items():
            if item.state == "done" and item.outcome is not None:
                outcome = hub.SignedOutcome.FromString(item.outcome)
                ready[work_id] = hub.Collected(work_id=work_id, outcome=outcome)
            elif item.state == "expired":
                ready[work_id] = hub.Collected(work_id=work_id, expired=True)
            elif item.state == "unknown":
                ready[work_id] = hub.Collected(work_id=work_id, unknown=True)
        return ready

    async def ListNodes(
        self, request: hub.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def run() -> hub.ListNodesResponse:
            self._coordinator(context)
            now = time.time()
            return hub.ListNodesResponse(
                nodes=[
                    hub.HubNode(
                        node_id=n.node_id,
                        last_seen=int(now if n.node_id in self._links else n.last_seen or 0),
                        connected=n.node_id in self._links,
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
    upkeep: asyncio.Task[None] | None = None

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.upkeep is not None:
            self.upkeep.cancel()
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
    servicer = HubServicer(config, queue)
    hub_pb2_grpc.add_HubServicer_to_server(servicer, server)
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
    running.upkeep = asyncio.create_task(servicer.tick())
    if health_address is not None:
        running.health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, running.health_server)
        running.health_port = running.health_server.add_insecure_port(health_address)
        await running.health_server.start()
    return running
