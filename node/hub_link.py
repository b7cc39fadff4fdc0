"""A node behind NAT: it dials out to a hub, takes signed work, runs it as if called directly.

The hub only carries work (``tiaki/v1/hub.proto``). Each item is checked here
before anything runs: the envelope's signature over all its bytes, that it is
for this node, that it is not past its ``not_after`` (plus the stated clock
skew) nor issued too far ahead; then it runs through the node's own servicer
(``node.server.NodeServicer``), the very code a direct call runs, with the
envelope's signer as the caller: ``policy.coordinators`` is applied to the
signer's key (a grant's ``signing_key``), never to the hub. What the servicer
returns, or the status it refused with, becomes an outcome signed with the
ledger key, kept in the node's inbox by work id before it is sent, and sent
again after a reconnect until the hub says it has stored it. A repeat delivery gets
the stored outcome; a repeated query id is a free replay at the ledger anyway.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from node.access import Caller
from node.config import HubLinkSettings, NodeConfig
from node.server import UNDECODABLE  # the servicer's own marker for bytes that do not decode
from tiaki.envelopes import EnvelopeError, open_envelope, seal_outcome, work_id_of
from tiaki.signing import SigningKey, key_id
from tiaki.v1 import hub_pb2 as hub
from tiaki.v1 import hub_pb2_grpc
from tiaki.v1 import node_pb2 as pb

log = logging.getLogger("tiaki.node.hub")

# The request message of each Node RPC an envelope may stand for.
REQUESTS: dict[str, Any] = {
    "GetInfo": pb.GetInfoRequest,
    "GetBudget": pb.GetBudgetRequest,
    "Plan": pb.QueryRequest,
    "Query": pb.QueryRequest,
    "ExportLedger": pb.ExportLedgerRequest,
    "SecureAdvertise": pb.SecureAdvertiseRequest,
    "SecureShareKeys": pb.SecureShareKeysRequest,
    "SecureMaskedInput": pb.SecureMaskedInputRequest,
    "SecureConsistency": pb.SecureConsistencyRequest,
    "SecureUnmask": pb.SecureUnmaskRequest,
}
# The longest an envelope may be valid for: a coordinator asking for more is refused.
MAX_ENVELOPE_SECONDS = 2 * 24 * 3600
# The hub writes at least every wait_seconds; a call quiet this much longer is given
# up, so a connection that went silent is noticed within wait + this bound.
SILENCE_GRACE_SECONDS = 10
WATCH_SECONDS = 0.5  # how often the silence is looked at
# Items the node takes at a time: a few, so that a short question is not queued
# behind a long one for long, and leases (60 s by default) do not run out unstarted.
CREDIT = 4
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 60.0
INBOX_KEEP_SECONDS = 3 * 24 * 3600


def channel_options(settings: HubLinkSettings) -> list[tuple[str, Any]]:
    """Keepalive that survives load balancers and NATs, and never looks like abuse.

    The hub writes on the call at least every ``wait_seconds`` (25 s by
    default: under the 30 to 60 s idle limits of common proxies and load
    balancers, which count data, not HTTP/2 pings). Beneath that, a ping every
    30 s with or without a call in flight keeps the connection warm in NAT
    tables (which drop idle flows after 60 s to 5 min); the hub accepts pings
    down to every 20 s, so these never earn a GOAWAY "too_many_pings". A ping
    unanswered for 10 s marks the connection dead. ``max_pings_without_data``
    0 lets the pings go on while nothing else is sent.
    """
    return [
        ("grpc.ssl_target_name_override", settings.server_name),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]


class _Aborted(Exception):
    pass


class RelayedCall:
    """What the servicer sees of a call relayed by a hub: the signer as caller, no transport."""

    def __init__(self, caller: Caller) -> None:
        self.relayed_caller = caller
        self.status: Any = None

    def abort_with_status(self, status: Any) -> None:
        self.status = status
        raise _Aborted


class Inbox:
    """Outcomes by work id, kept until the hub has them and a while after (a repeat)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outcomes (work_id TEXT PRIMARY KEY, outcome BLOB NOT "
            "NULL, pushed INTEGER NOT NULL DEFAULT 0, stored_at REAL NOT NULL)"
        )

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def get(self, work_id: str) -> hub.SignedOutcome | None:
        with self._locked() as db:
            row = db.execute(
                "SELECT outcome FROM outcomes WHERE work_id = ?", (work_id,)
            ).fetchone()
        return None if row is None else hub.SignedOutcome.FromString(bytes(row[0]))

    def put(self, work_id: str, outcome: hub.SignedOutcome) -> None:
        with self._locked() as db:
            db.execute(
                "INSERT OR IGNORE INTO outcomes (work_id, outcome, stored_at) VALUES (?, ?, ?)",
                (work_id, outcome.SerializeToString(deterministic=True), time.time()),
            )
            db.execute(
                "DELETE FROM outcomes WHERE pushed = 1 AND stored_at < ?",
                (time.time() - INBOX_KEEP_SECONDS,),
            )

    def pushed(self, work_id: str) -> None:
        with self._locked() as db:
            db.execute("UPDATE outcomes SET pushed = 1 WHERE work_id = ?", (work_id,))

    def unpushed(self) -> list[tuple[str, hub.SignedOutcome]]:
        with self._locked() as db:
            rows = db.execute(
                "SELECT work_id, outcome FROM outcomes WHERE pushed = 0 ORDER BY stored_at"
            ).fetchall()
        return [(str(w), hub.SignedOutcome.FromString(bytes(o))) for w, o in rows]

    def close(self) -> None:
        with self._locked() as db:
            db.close()


def _refusal(
    sha: bytes, node_id: str, code: grpc.StatusCode, message: str, *, expired: bool = False
) -> hub.Outcome:
    return hub.Outcome(
        envelope_sha256=sha,
        node_id=node_id,
        code=code.value[0],
        message=message,
        expired=expired,
    )


class HubWorker:
    """Turns one work item into its signed outcome: checks, the servicer, the inbox."""

    def __init__(
        self,
        config: Callable[[], NodeConfig],
        servicer: Any,
        key: SigningKey,
        inbox: Inbox,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._servicer = servicer
        self._key = key
        self.inbox = inbox
        self._clock = clock

    def handle(self, item: hub.WorkItem) -> hub.SignedOutcome:
        # Kept under the envelope's own hash, not the id the hub sent with it: a hub
        # cannot make one request's outcome stand for another's.
        key = work_id_of(item.envelope)
        stored = self.inbox.get(key)
        if stored is not None:
            return stored  # delivered again: the outcome already given, nothing re-run
        signed = seal_outcome(self._key, self.outcome(item.envelope))
        self.inbox.put(key, signed)
        return signed

    def outcome(self, signed: hub.SignedEnvelope) -> hub.Outcome:
        config = self._config()
        node_id = config.node_id
        sha = hashlib.sha256(signed.envelope).digest()
        try:
            opened = open_envelope(signed)
        except EnvelopeError as exc:
            log.warning("refused relayed work: %s", exc.message, extra={"outcome": "refused"})
            return _refusal(sha, node_id, grpc.StatusCode.PERMISSION_DENIED, exc.message)
        envelope = opened.envelope
        if envelope.node_id != node_id:
            return _refusal(
                sha, node_id, grpc.StatusCode.PERMISSION_DENIED,
                f"the envelope is for {envelope.node_id[:64]!r}, not this node",
            )  # fmt: skip
        skew = config.server.hub.skew_seconds if config.server.hub is not None else 0
        now = self._clock()
        if now > envelope.not_after + skew:
            return _refusal(
                sha, node_id, grpc.StatusCode.DEADLINE_EXCEEDED,
                "expired: the request's deadline passed before this node received it; "
                "nothing was done or spent",
                expired=True,
            )  # fmt: skip
        if envelope.issued_at > now + skew or (
            envelope.not_after - envelope.issued_at > MAX_ENVELOPE_SECONDS
        ):
            return _refusal(
                sha, node_id, grpc.StatusCode.FAILED_PRECONDITION,
                "the request is dated ahead of this node's clock by more than its skew "
                "allowance, or asks to stay valid for more than two days; nothing was done",
            )  # fmt: skip
        return self._run(sha, node_id, envelope, opened.signer_key, config)

    def _run(
        self, sha: bytes, node_id: str, envelope: hub.Envelope, signer: str, config: NodeConfig
    ) -> hub.Outcome:
        grant = next((g for g in config.policy.coordinators if g.signing_key == signer), None)
        name = grant.identity if grant is not None and grant.identity else None
        identity = name or f"signer {key_id(signer)}"
        call = RelayedCall(Caller(identity, None, verified=True, signing_key=signer))
        method = getattr(self._servicer, envelope.method)
        request = self._decoded(envelope)
        try:
            reply = method(request, call)
            if envelope.method == "ExportLedger":
                replies = [line.SerializeToString() for line in reply]
            else:
                replies = [reply if isinstance(reply, bytes) else reply.SerializeToString()]
        except _Aborted:
            status = call.status
            details = dict(status.trailing_metadata or ()).get("grpc-status-details-bin", b"")
            return hub.Outcome(
                envelope_sha256=sha,
                node_id=node_id,
                code=status.code.value[0],
                message=status.details or "",
                status=details if isinstance(details, bytes) else b"",
            )
        return hub.Outcome(envelope_sha256=sha, node_id=node_id, code=0, replies=replies)

    @staticmethod
    def _decoded(envelope: hub.Envelope) -> Any:
        try:
            return REQUESTS[envelope.method].FromString(envelope.payload)
        except Exception:
            return UNDECODABLE


class HubLink:
    """The node's connection out to its hub: one Connect call, reconnected on failure.

    Runs in a thread of its own. Items are run one at a time, in order, each
    outcome stored in the inbox before it is sent; the hub acknowledges what it
    has stored, and whatever it has not is sent again after a reconnect. The
    hub writes at least every ``wait_seconds``; a call quiet for that plus
    :data:`SILENCE_GRACE_SECONDS` is given up and made again, so a connection
    gone silent is noticed within that bound. :meth:`stop` ends it at once.
    """

    def __init__(self, settings: HubLinkSettings, worker: HubWorker) -> None:
        self._settings = settings
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tiaki-hub-link", daemon=True)
        self.last_heard: float | None = None
        self.connected = threading.Event()
        self._jitter = secrets.SystemRandom()  # spreads reconnects out; never noise
        self._open_channel: grpc.Channel | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the item in hand is done (its outcome kept for later); close the inbox.

        Closing the channel ends the open call at once.
        """
        self._stop.set()
        channel = self._open_channel
        if channel is not None:
            channel.close()
        self._thread.join(timeout + SILENCE_GRACE_SECONDS)
        self._worker.inbox.close()

    def _channel(self) -> grpc.Channel:
        s = self._settings
        credentials = grpc.ssl_channel_credentials(
            root_certificates=s.ca.read_bytes(),
            private_key=s.key.read_bytes(),
            certificate_chain=s.cert.read_bytes(),
        )
        return grpc.secure_channel(s.address, credentials, options=channel_options(s))

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            self.connected.clear()
            try:
                with self._channel() as channel:
                    self._open_channel = channel
                    if self._stop.is_set():
                        break
                    self._connect(hub_pb2_grpc.HubStub(channel))
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if not self._stop.is_set():
                    log.warning(
                        "hub %s: %s (%s); retrying",
                        self._settings.address,
                        exc.details() if hasattr(exc, "details") else exc,
                        code.name if code is not None else "?",
                        extra={"outcome": "hub-unreachable"},
                    )
            except OSError as exc:
                log.error("cannot read the hub's TLS files: %s", exc)
            except Exception:  # a fault of ours must not end the node's only way in
                log.exception("the hub link failed; reconnecting")
            if self.connected.is_set():  # the hub was heard: this is a new run of failures
                backoff = BACKOFF_FIRST
            self.connected.clear()
            if self._stop.is_set():
                break
            # Full jitter: a hub that comes back is not met by every node at once.
            self._stop.wait(self._jitter.uniform(0, backoff))
            backoff = min(BACKOFF_MOST, backoff * 2)

    def _connect(self, stub: Any) -> None:
        """One Connect call, until it fails or the node stops (``connected`` is set once the
        hub is heard).

        The first message offers :data:`CREDIT` items and carries the outcomes
        the hub may not have (sent before a call that failed). Each outcome
        sent later gives the credit of its item back.
        """
        heartbeat = self._settings.wait_seconds
        outbox: queue.Queue[hub.NodeMessage | None] = queue.Queue()
        outbox.put(
            hub.NodeMessage(
                credit=CREDIT,
                heartbeat_seconds=heartbeat,
                outcomes=[
                    hub.NodeOutcome(work_id=w, outcome=o) for w, o in self._worker.inbox.unpushed()
                ],
            )
        )
        watch = _Silence(heartbeat + SILENCE_GRACE_SECONDS)
        call = stub.Connect(watch.requests(outbox, self._stop))
        watch.call = call
        for message in call:
            watch.heard()
            self.last_heard = time.time()
            self.connected.set()
            for work_id in message.stored:
                self._worker.inbox.pushed(work_id)
            for item in message.items:
                with watch.busy():
                    outcome = self._worker.handle(item)
                outbox.put(
                    hub.NodeMessage(
                        credit=1, outcomes=[hub.NodeOutcome(work_id=item.work_id, outcome=outcome)]
                    )
                )
        # The hub ended the call (it is stopping, or a newer call replaced it): again.


class _Silence:
    """Gives up on a call the hub has left quiet too long, from the thread that feeds it."""

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self.call: Any = None
        self._last = time.monotonic()
        self._busy = False

    def heard(self) -> None:
        self._last = time.monotonic()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """While the node works on an item it reads nothing: that is not the hub's silence."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
            self._last = time.monotonic()

    def requests(
        self, outbox: queue.Queue[hub.NodeMessage | None], stop: threading.Event
    ) -> Iterator[hub.NodeMessage]:
        while True:
            try:
                message = outbox.get(timeout=WATCH_SECONDS)
            except queue.Empty:
                quiet = time.monotonic() - self._last
                if stop.is_set() or (not self._busy and quiet > self.bound):
                    if not stop.is_set():
                        log.warning(
                            "the hub has been silent for %.0f s; reconnecting",
                            quiet,
                            extra={"outcome": "hub-unreachable"},
                        )
                    if self.call is not None:
                        self.call.cancel()
                    return
                continue
            if message is None:
                return
            yield message


def start_hub_link(service: Any, servicer: Any) -> HubLink:
    """Dial the node's hub (``server.hub``) and start pulling work for ``servicer``."""
    settings = service.config.server.hub
    assert settings is not None  # only called for a node with a hub
    inbox = Inbox(service.config.paths.hub_inbox)
    worker = HubWorker(lambda: service.config, servicer, service.signing_key, inbox)
    link = HubLink(settings, worker)
    link.start()
    return link
