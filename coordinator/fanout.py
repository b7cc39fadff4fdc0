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

from coordinator.client import (
    NodeCall,
    NodeClient,
    budget_call,
    channel_credentials,
    connection_failure,
    plan_call,
    query_call,
)
from coordinator.config import FederationConfig, NodeEntry
from coordinator.hub_client import HubChannel, HubTransport
from coordinator.results import NodeOutcome, NodeStatus
from tiaki.answer import Answer
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


def pool_size(direct: int, through_hub: int) -> int:
    """Threads for the fan-out: up to 64 for nodes dialled direct (each thread is busy in
    its call), and one for each node through the hub (its thread only waits, and every
    call in flight at once shares one Submit and one Collect)."""
    return max(1, min(64, direct) + through_hub)


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
        through_hub = sum(1 for e in entries if e.via == "hub")
        self._pool = ThreadPoolExecutor(
            max_workers=pool_size(len(entries) - through_hub, through_hub)
        )

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

    def start(self, name: str, call: NodeCall[T]) -> Future[T]:
        """One call to one node, under way: through the hub without a thread (calls in
        flight together share one Submit and one Collect), direct in the pool's."""
        client = self.clients[name]
        if client.starts_without_a_thread:
            return client.start(call)
        return self._pool.submit(client.run, call)

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


def _preflight_one(
    name: str, plan: NodePlan | TiakiError, budget: BudgetStatus | TiakiError | None
) -> Preflight:
    failure = plan if isinstance(plan, TiakiError) else budget
    if isinstance(failure, TiakiError):
        status, reason = failure_outcome(failure)
        return Preflight(name, None, None, status, reason)
    assert isinstance(plan, NodePlan)
    # Nodes report their budget inside the plan; one round trip serves both.
    left = plan.budget if plan.budget is not None else budget
    assert isinstance(left, BudgetStatus)
    return _affordable(name, plan, left)


def _affordable(name: str, plan: NodePlan, budget: BudgetStatus) -> Preflight:
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


def _settled(future: Future[Any]) -> Any:
    """The future's result, or the typed error it failed with."""
    try:
        return future.result()
    except TiakiError as exc:
        return exc


def preflight(federation: Federation, query: Query, query_id: str = "") -> dict[str, Preflight]:
    """Plan and budget from every node, concurrently. Spends nothing anywhere.

    With ``query_id``, a node that already answered this question under it is
    ready whatever its budget: asking again replays the answer for free.
    """
    names = federation.names
    started = {name: federation.start(name, plan_call(query, query_id)) for name in names}
    plans = {name: _settled(future) for name, future in started.items()}
    # A node whose plan did not carry its budget is asked for it (older nodes).
    asked = {
        name: federation.start(name, budget_call())
        for name, plan in plans.items()
        if isinstance(plan, NodePlan) and plan.budget is None
    }
    budgets = {name: _settled(future) for name, future in asked.items()}
    return {name: _preflight_one(name, plans[name], budgets.get(name)) for name in names}


def ask_node(
    client: NodeClient,
    name: str,
    query: Query,
    *,
    query_id: str,
    analyst: str,
    retries: int,
    attempts_made: int = 0,
    started: float | None = None,
) -> NodeOutcome:
    """Ask one node, retrying transient failures with the same query id.

    ``attempts_made`` and ``started`` carry on after attempts made elsewhere
    (:func:`start_ask`'s first one), waiting before the next as between any two.
    """
    started = time.monotonic() if started is None else started
    attempt = attempts_made
    while True:
        if attempt:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
        attempt += 1
        try:
            answer = client.query(query, query_id=query_id, analyst=analyst)
        except TiakiError as exc:
            status, reason = failure_outcome(exc)
            if status is NodeStatus.UNREACHABLE and attempt <= retries:
                continue
            return NodeOutcome(
                name, status, reason, None, None, attempt, time.monotonic() - started
            )
        return _answered(name, answer, attempt, started)


def _answered(name: str, answer: Answer, attempt: int, started: float) -> NodeOutcome:
    return NodeOutcome(
        name,
        NodeStatus.REPLAYED if answer.replayed else NodeStatus.ANSWERED,
        "",
        answer.charged.amount,
        answer,
        attempt,
        time.monotonic() - started,
    )


def start_ask(
    federation: Federation, name: str, query: Query, *, query_id: str, analyst: str, retries: int
) -> Future[NodeOutcome]:
    """:func:`ask_node` under way. A node through the hub is asked without a thread
    (all of them in one Submit); only a retry, which waits first, takes one."""
    client = federation.clients[name]
    if not client.starts_without_a_thread:
        return federation.submit(
            ask_node, client, name, query, query_id=query_id, analyst=analyst, retries=retries
        )
    started = time.monotonic()
    result: Future[NodeOutcome] = Future()

    def first(answer: Future[Answer]) -> None:
        try:
            result.set_result(_answered(name, answer.result(), 1, started))
            return
        except TiakiError as exc:
            status, reason = failure_outcome(exc)
        except Exception as exc:  # not the node's answer: for whoever waits on it
            result.set_exception(exc)
            return
        if status is not NodeStatus.UNREACHABLE or retries < 1:
            elapsed = time.monotonic() - started
            result.set_result(NodeOutcome(name, status, reason, None, None, 1, elapsed))
            return
        again = federation.submit(
            ask_node, client, name, query,
            query_id=query_id, analyst=analyst, retries=retries, attempts_made=1, started=started,
        )  # fmt: skip
        again.add_done_callback(lambda done: _pass_on(done, result))

    federation.start(name, query_call(query, query_id=query_id, analyst=analyst)).add_done_callback(
        first
    )
    return result


def _pass_on(done: Future[T], to: Future[T]) -> None:
    try:
        to.set_result(done.result())
    except Exception as exc:
        to.set_exception(exc)
