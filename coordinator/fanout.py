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

from coordinator.client import NodeClient, channel_credentials, connection_failure
from coordinator.config import FederationConfig, NodeEntry
from coordinator.hub_client import HubChannel, HubTransport
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.budget import BudgetStatus, display_amount
from tiaki.certs import identity_of
from tiaki.errors import (
    BusyError,
    DeadlineExceededError,
    InsufficientBudgetError,
    InvalidQueryError,
    NodeUnreachableError,
    NotReadyError,
    PolicyViolationError,
    QueryIdConflictError,
    RemoteError,
    RequestExpiredError,
    TiakiError,
)
from tiaki.node_info import NodePlan
from tiaki.query import Query
from tiaki.signing import load_or_create_signing_key

# Worth asking again, with the same query id: the node did not decide anything.
TRANSIENT: tuple[type[TiakiError], ...] = (NodeUnreachableError, NotReadyError, BusyError)
# The node looked at the request and declined it; asking again changes nothing.
REFUSALS: tuple[type[TiakiError], ...] = (
    InvalidQueryError,
    PolicyViolationError,
    InsufficientBudgetError,
    QueryIdConflictError,
)
BACKOFF_SECONDS = 0.2
T = TypeVar("T")


@dataclass(frozen=True)
class Preflight:
    """One node's answer to "what would this cost you, and can you afford it?"."""

    node: str
    plan: NodePlan | None
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
        self.hub: HubChannel | None = None
        self.clients = {}
        for e in entries:
            if e.via == "hub":
                self.clients[e.name] = NodeClient(
                    e.where,
                    timeout=config.defaults.timeout_seconds,
                    transport=self._through_hub(e, credentials),
                )
            else:
                assert e.address is not None  # validated: a direct node has an address
                self.clients[e.name] = NodeClient(
                    e.address,
                    identity=config.identity,
                    timeout=config.defaults.timeout_seconds,
                    credentials=credentials,
                    server_name=e.expected_identity,
                )
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(64, len(entries))))

    def _through_hub(self, entry: NodeEntry, credentials: Any) -> HubTransport:
        hub_entry = self.config.hub
        assert hub_entry is not None and entry.signing_key is not None  # validated
        if self.hub is None:
            self.hub = HubChannel(
                hub_entry.address,
                identity=self.config.identity,
                credentials=credentials,
                server_name=hub_entry.server_name,
            )
            self._signer, _ = load_or_create_signing_key(self.config.signing_key_path)
        return HubTransport(
            self.hub,
            node_id=entry.expected_identity,
            node_key=entry.signing_key,
            signer=self._signer,
        )

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
        if self.hub is not None:
            self.hub.close()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def failure_outcome(exc: TiakiError) -> tuple[NodeStatus, str]:
    """What became of a node's part, decided by the error's type, never its words."""
    if isinstance(exc, RequestExpiredError):
        return NodeStatus.UNREACHABLE, exc.message.splitlines()[0][:300]
    if isinstance(exc, DeadlineExceededError):
        return NodeStatus.UNREACHABLE, "unreachable: no answer before the deadline"
    if isinstance(exc, BusyError):
        return NodeStatus.UNREACHABLE, f"busy: {exc.message.splitlines()[0][:200]}"
    if isinstance(exc, TRANSIENT):
        return NodeStatus.UNREACHABLE, connection_failure(exc.message)
    if isinstance(exc, REFUSALS) or (isinstance(exc, RemoteError) and exc.refused):
        return NodeStatus.REFUSED, exc.message
    return NodeStatus.ERROR, exc.message


def failure_reason(exc: TiakiError) -> str:
    """The words for a failed call: the connection failure explained, or the node's message."""
    return failure_outcome(exc)[1]


def _preflight_one(name: str, client: NodeClient, query: Query, query_id: str) -> Preflight:
    try:
        plan = client.plan(query, query_id)
        # Nodes report their budget inside the plan; one round trip serves both.
        budget = plan.budget if plan.budget is not None else client.budget()
    except TiakiError as exc:
        status, reason = failure_outcome(exc)
        return Preflight(name, None, None, status, reason)
    cost = plan.charge.amount
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
        except TiakiError as exc:
            status, reason = failure_outcome(exc)
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
