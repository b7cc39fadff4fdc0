"""Asking every node at once: pre-flight, concurrent fan-out with retries, outcomes.

One query id per question, reused on every retry: a node that already
answered returns its stored answer and charges nothing more. Only transient
failures (unreachable, deadline) are retried. A pre-flight round asks every
node what the question would cost (``Plan``) and what it has left
(``GetBudget``), so that nobody is charged when another node would refuse and
the analyst asked for all or nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from coordinator.client import NodeClient
from coordinator.config import FederationConfig, FederationConfigError, NodeEntry
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.budget import BudgetStatus, display_amount
from tiaki.certs import CertError, identity_of, tls_files
from tiaki.convert import budget_from_proto, charged_from_proto
from tiaki.errors import RemoteError
from tiaki.files import is_loopback
from tiaki.query import Query
from tiaki.v1 import node_pb2 as pb

TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
BACKOFF_SECONDS = 0.2
T = TypeVar("T")


@dataclass(frozen=True)
class Preflight:
    """One node's answer to "what would this cost you, and can you afford it?"."""

    node: str
    plan: pb.QueryPlan | None
    budget: BudgetStatus | None
    status: NodeStatus | None  # None: the node can be asked
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is None


def coordinator_identity(config: FederationConfig) -> str:
    """The identity nodes record for this coordinator: its certificate's under TLS, else
    the claimed ``identity`` (insecure development)."""
    if config.tls is not None and not config.insecure:
        return identity_of(config.tls.cert.read_bytes())
    return config.identity


class Federation:
    """Clients for every node of a federation file, closed together."""

    def __init__(self, config: FederationConfig, names: Sequence[str] | None = None) -> None:
        self.config = config
        entries = [config.node(n) for n in names] if names else list(config.nodes)
        credentials = channel_credentials(config, entries)
        self.clients = {
            e.name: NodeClient(
                e.address,
                identity=config.identity,
                timeout=config.defaults.timeout_seconds,
                credentials=credentials,
                server_name=e.expected_identity,
            )
            for e in entries
        }
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(64, len(entries))))

    @property
    def identity(self) -> str:
        """Who the nodes will see: the certificate's identity under TLS, else the claim."""
        return coordinator_identity(self.config)

    @property
    def names(self) -> list[str]:
        return list(self.clients)

    def each(self, work: Callable[[str, NodeClient], T]) -> Iterator[tuple[str, T]]:
        """Run ``work`` on every node concurrently; yield (name, result) as they finish."""
        futures = {self._pool.submit(work, name, c): name for name, c in self.clients.items()}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def channel_credentials(
    config: FederationConfig, entries: Sequence[NodeEntry]
) -> grpc.ChannelCredentials | None:
    """Mutual-TLS credentials from the federation file, or None in insecure development mode."""
    if config.insecure:
        remote = [e.name for e in entries if not is_loopback(e.address)]
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
# (words in gRPC's message, what to tell the analyst). First match wins.
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


def _failure(exc: RemoteError) -> tuple[NodeStatus, str]:
    if exc.status_code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return NodeStatus.UNREACHABLE, "unreachable: no answer before the deadline"
    if exc.status_code in TRANSIENT:
        if "in flight" in exc.message:  # the node's own word: busy, try again shortly
            return NodeStatus.UNREACHABLE, f"busy: {exc.message.splitlines()[0][:200]}"
        return NodeStatus.UNREACHABLE, connection_failure(exc.message)
    if exc.status_code in REFUSALS:
        return NodeStatus.REFUSED, exc.message
    return NodeStatus.ERROR, exc.message


def failure_reason(exc: RemoteError) -> str:
    """The words for a failed call: the connection failure explained, or the node's message."""
    return _failure(exc)[1]


def _preflight_one(name: str, client: NodeClient, query: Query, query_id: str) -> Preflight:
    try:
        plan = client.plan(query, query_id)
        # Nodes report their budget inside the plan; one round trip serves both.
        budget = budget_from_proto(plan.budget) if plan.HasField("budget") else client.budget()
    except RemoteError as exc:
        status, reason = _failure(exc)
        return Preflight(name, None, None, status, reason)
    cost = charged_from_proto(plan.charge).amount
    if plan.replay:  # already answered under this id: the node replays it for free
        return Preflight(name, plan, budget, None)
    if cost > budget.available:
        return Preflight(
            name,
            plan,
            budget,
            NodeStatus.REFUSED,
            f"would cost {display_amount(cost)} but has {display_amount(budget.available)} left",
        )
    return Preflight(name, plan, budget, None)


def preflight(federation: Federation, query: Query, query_id: str = "") -> dict[str, Preflight]:
    """Plan and budget from every node, concurrently. Spends nothing anywhere.

    With ``query_id``, a node that already answered this question under it is
    ready whatever its budget: asking again replays the answer for free.
    """
    results = dict(federation.each(lambda name, c: _preflight_one(name, c, query, query_id)))
    return {name: results[name] for name in federation.names}


def ask_node(
    client: NodeClient, name: str, query: Query, *, query_id: str, analyst: str, retries: int
) -> NodeOutcome:
    """Ask one node, retrying transient failures with the same query id."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = client.query(query, query_id=query_id, analyst=analyst)
        except RemoteError as exc:
            status, reason = _failure(exc)
            if status is NodeStatus.UNREACHABLE and attempt <= retries:
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
                continue
            return NodeOutcome(
                name, status, reason, None, None, attempt, time.monotonic() - started
            )
        return NodeOutcome(
            name,
            NodeStatus.REPLAYED if answer.replayed else NodeStatus.ANSWERED,
            "",
            answer.charged.amount,
            answer,
            attempt,
            time.monotonic() - started,
        )
