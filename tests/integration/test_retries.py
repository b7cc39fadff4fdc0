"""Retries and partial federations over a network that fails the way real ones do.

A small byte-level TCP proxy (threads and sockets on 127.0.0.1, mutual TLS
passes straight through it) sits between a coordinator's client and a real
in-process node. It can keep back the node's reply and then reset the
connection: the node has charged and answered, the client sees UNAVAILABLE.
The coordinator's retry with the same query id must get the identical stored
answer, replayed, with no second charge; a different query under that id must
be refused and charge nothing.

Partial federations: one node answers, one is down, one is slower than the
deadline (the proxy delays its bytes), one refuses the coordinator's identity.
The coordinator must return on time with a result labelled with who answered,
release nothing under ``require_all``, and record every outcome in its mirror.
A node that answers only after the deadline has charged: the mirror must show
the gap, and re-asking under the same id must close it with a replay.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from coordinator.client import NodeClient, new_query_id
from coordinator.config import CoordinatorTls, Defaults, FederationConfig, NodeEntry
from coordinator.fanout import BACKOFF_SECONDS, Federation, ask_node
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger, spending_disagreements
from coordinator.output import federated_json
from coordinator.results import FederatedAnswer, NodeStatus
from node.config import CoordinatorGrant
from node.service import Released
from tests.conftest import FederationPki
from tests.integration.conftest import LiveNode
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.convert import answer_from_bytes
from tiaki.errors import TiakiError
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.wire_errors import status_code_of

IDENTITY = "coordinator-a"  # the common name on the certificate the clients present
POLICY = {"budget": {"limit": "100", "period": "none"}, "per_query_max": "1"}
SLACK = 1.5  # seconds beyond the deadline a federated question may take to come back
T = TypeVar("T")


def eps(text: str) -> PrivacyCost:
    return PrivacyCost.parse(PrivacyDefinition.PURE, text)


# ---------------------------------------------------------------- the proxy


class _Link:
    """One proxied connection: the client's socket and the node's."""

    def __init__(self, client: socket.socket, node: socket.socket) -> None:
        self.client = client
        self.node = node
        self.alive = True

    def reset(self) -> None:
        self.alive = False
        for sock in (self.client, self.node):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv
            except OSError:
                pass
            sock.close()  # linger 0: the peer gets a reset


class Proxy:
    """Forwards bytes between 127.0.0.1:<port> and ``upstream``, with faults on demand.

    ``delay``: every chunk from the node waits this long before it is passed
    on (a node slower than any deadline). :meth:`hold` keeps back everything
    the node sends from then on, while requests still go through;
    :meth:`cut` resets every open connection, dropping what was held.
    """

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._holding = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                node = socket.create_connection(self._upstream, timeout=5)
                node.settimeout(None)
            except OSError:
                client.close()
                continue
            link = _Link(client, node)
            with self._lock:
                self._links.append(link)
                self.connections += 1
            threading.Thread(target=self._pump, args=(link, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(link, True), daemon=True).start()

    def _pump(self, link: _Link, from_node: bool) -> None:
        src, dst = (link.node, link.client) if from_node else (link.client, link.node)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if from_node:
                    if self.delay:
                        time.sleep(self.delay)
                    while self._holding.is_set() and link.alive:
                        time.sleep(0.005)
                if not link.alive:
                    return  # cut: what was held is dropped
                dst.sendall(data)
        except OSError:
            return

    def hold(self) -> None:
        self._holding.set()

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.reset()
        self._holding.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy_to() -> Iterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(upstream: str, delay: float = 0.0) -> Proxy:
        proxy = Proxy(upstream, delay)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def client_via(proxy: Proxy, node: LiveNode, pki: FederationPki, timeout: float = 10) -> NodeClient:
    """A mutual-TLS client of ``node`` whose bytes go through ``proxy``."""
    return NodeClient(
        proxy.address,
        identity=IDENTITY,
        timeout=timeout,
        credentials=pki.channel_credentials(IDENTITY),
        server_name=node.config.node_id,
    )


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def lose_the_reply(proxy: Proxy, node: LiveNode, call: Callable[[], T]) -> T:
    """Run ``call`` while the proxy keeps back the node's bytes; once the node's
    ledger has the new charge (so it has answered), reset the connection."""
    ledger = node.running.service.ledger
    charged = len(ledger.entries())
    proxy.hold()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(call)
        try:
            wait_for(lambda: len(ledger.entries()) > charged, "the node to charge")
            time.sleep(0.05)  # the reply is written to the proxy, which keeps it back
            assert not future.done(), "the reply got through the holding proxy"
        finally:
            proxy.cut()
        return future.result(timeout=30)


def stored_answer(node: LiveNode, query: Query, query_id: str) -> Answer:
    """The answer the node committed for ``query_id`` (the bytes a replay returns)."""
    stored = node.running.service.ledger.check(
        IDENTITY, query_id, query.canonical(), query.cost.amount
    )
    assert stored is not None, f"no stored answer for {query_id}"
    return answer_from_bytes(stored.response)


# ---------------------------------------------------------------- a reply lost after the charge


def test_reply_cut_after_the_charge_is_replayed_by_the_coordinators_retry(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    proxy_to: Callable[..., Proxy],
) -> None:
    node = start_node(make_node_config(policy=POLICY), synth_csv)
    proxy = proxy_to(node.address)
    query = Query(QueryKind.COUNT, eps("0.25"), group_by=("service",))
    query_id = new_query_id()
    with client_via(proxy, node, pki) as client:
        client.info()  # connected: the TLS session runs through the proxy

        def first_try() -> TiakiError:
            with pytest.raises(TiakiError) as info:
                client.query(query, query_id=query_id, analyst="ana")
            return info.value

        failure = lose_the_reply(proxy, node, first_try)
        assert status_code_of(failure) is grpc.StatusCode.UNAVAILABLE, failure
        [entry] = node.running.service.ledger.entries()
        assert (entry.query_id, entry.identity) == (query_id, IDENTITY)
        spent = node.budget().lifetime_spent
        assert spent == entry.charge > 0
        committed = stored_answer(node, query, query_id)

        outcome = ask_node(client, "ngo", query, query_id=query_id, analyst="ana", retries=2)

    assert outcome.status is NodeStatus.REPLAYED, outcome
    assert outcome.answer is not None and outcome.answer.replayed
    assert outcome.answer.cells == committed.cells, "the retry must return the stored noise"
    assert outcome.answer.dataset_version == committed.dataset_version
    assert outcome.charged == entry.charge
    assert node.running.service.ledger.entries() == [entry], "the retry charged again"
    assert node.budget().lifetime_spent == spent
    assert proxy.connections >= 2, "the retry should have come over a new connection"


def test_cut_inside_ask_node_is_retried_with_the_same_id_and_charged_once(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    proxy_to: Callable[..., Proxy],
) -> None:
    node = start_node(make_node_config(policy=POLICY), synth_csv)
    proxy = proxy_to(node.address)
    query = Query(QueryKind.MEAN, eps("0.2"), column="sessions")
    query_id = new_query_id()
    with client_via(proxy, node, pki) as client:
        client.info()
        outcome = lose_the_reply(
            proxy,
            node,
            lambda: ask_node(client, "ngo", query, query_id=query_id, analyst="ana", retries=2),
        )
        # The stored answer is what every later attempt under this id gets.
        again = client.query(query, query_id=query_id, analyst="ana")

    [entry] = node.running.service.ledger.entries()
    assert outcome.status is NodeStatus.REPLAYED, outcome
    assert outcome.attempts >= 2, "the first attempt lost its reply; ask_node had to retry"
    assert outcome.charged == entry.charge
    assert outcome.answer is not None
    assert outcome.answer.cells == stored_answer(node, query, query_id).cells == again.cells
    assert again.replayed
    assert node.budget().lifetime_spent == entry.charge


def test_a_different_query_under_a_used_id_is_refused_and_charges_nothing(
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    proxy_to: Callable[..., Proxy],
) -> None:
    node = start_node(make_node_config(policy=POLICY), synth_csv)
    proxy = proxy_to(node.address)
    query = Query(QueryKind.COUNT, eps("0.25"))
    query_id = new_query_id()
    with client_via(proxy, node, pki) as client:
        client.info()
        lose_the_reply(
            proxy,
            node,
            lambda: ask_node(client, "ngo", query, query_id=query_id, analyst="ana", retries=2),
        )
        entries = node.running.service.ledger.entries()
        spent = node.budget().lifetime_spent
        others = (
            Query(QueryKind.COUNT_CLIENTS, eps("0.25")),
            Query(QueryKind.COUNT, eps("0.5")),  # the same question at another cost
            Query(QueryKind.COUNT, eps("0.25"), group_by=("region",)),
        )
        for other in others:
            with pytest.raises(TiakiError) as info:
                client.query(other, query_id=query_id, analyst="ana")
            assert status_code_of(info.value) is grpc.StatusCode.ALREADY_EXISTS
            outcome = ask_node(client, "ngo", other, query_id=query_id, analyst="ana", retries=2)
            assert outcome.status is NodeStatus.REFUSED, outcome
            assert (outcome.attempts, outcome.charged, outcome.answer) == (1, None, None)
        # The original question under its id is still answered, from the store.
        assert client.query(query, query_id=query_id, analyst="ana").replayed
    assert node.running.service.ledger.entries() == entries
    assert node.budget().lifetime_spent == spent


# ---------------------------------------------------------------- partial federations


def closed_address() -> str:
    """A loopback port that nothing listens on (a node that is down)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def federation_config(
    pki: FederationPki,
    mirror: Path,
    nodes: list[tuple[str, str, str]],
    *,
    timeout: float,
    retries: int,
) -> FederationConfig:
    """(name, address, node certificate name) per node; mutual TLS as ``coordinator-a``."""
    return FederationConfig(
        analyst="ana",
        identity=IDENTITY,
        ledger=mirror,
        defaults=Defaults(timeout_seconds=timeout, retries=retries),
        tls=CoordinatorTls.model_validate(pki.federation_tls(IDENTITY)),
        nodes=tuple(NodeEntry(name=n, address=a, server_name=s) for n, a, s in nodes),
    )


def timed(call: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def statuses(answer: FederatedAnswer) -> dict[str, NodeStatus]:
    return {o.node: o.status for o in answer.outcomes}


def mirrored(mirror: MirrorLedger, query_id: str) -> dict[str, tuple[str, Fraction | None]]:
    [question] = [q for q in mirror.questions() if q.query_id == query_id]
    return {o.node: (str(o.status), o.charged) for o in question.outcomes}


def test_partial_federation_returns_on_time_labelled_and_fully_mirrored(
    tmp_path: Path,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    proxy_to: Callable[..., Proxy],
) -> None:
    deadline = 1.5
    answers = start_node(make_node_config(node_id="ngo-answers", policy=POLICY), synth_csv)
    slow = start_node(make_node_config(node_id="ngo-slow", policy=POLICY), synth_csv)
    not_you = {**POLICY, "coordinators": [{"identity": "coordinator-b"}]}
    refuses = start_node(make_node_config(node_id="ngo-refuses", policy=not_you), synth_csv)
    slow_proxy = proxy_to(slow.address, delay=deadline + 2)
    config = federation_config(
        pki,
        tmp_path / "mirror.sqlite",
        [
            ("answers", answers.address, "ngo-answers"),
            ("down", closed_address(), "ngo-down"),
            ("slow", slow_proxy.address, "ngo-slow"),
            ("refuses", refuses.address, "ngo-refuses"),
        ],
        timeout=deadline,
        retries=2,
    )
    query = Query(QueryKind.COUNT, eps("0.3"), group_by=("service",))
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        partial, seconds = timed(
            lambda: ask_federation(federation, query, analyst="ana", mirror=mirror)
        )
        assert seconds < deadline + SLACK, f"took {seconds:.2f}s with a {deadline}s deadline"
        assert statuses(partial) == {
            "answers": NodeStatus.ANSWERED,
            "down": NodeStatus.UNREACHABLE,
            "slow": NodeStatus.UNREACHABLE,
            "refuses": NodeStatus.REFUSED,
        }
        reasons = {o.node: o.reason for o in partial.outcomes}
        assert "deadline" in reasons["slow"], reasons
        assert "connection refused: nothing listens" in reasons["down"], reasons
        assert "does not accept requests from 'coordinator-a'" in reasons["refuses"], reasons
        assert partial.released
        assert partial.answered_nodes == ("answers",)
        assert partial.coverage == "1 of 4 nodes (answers)"
        [answered] = [o for o in partial.outcomes if o.node == "answers"]
        assert answered.answer is not None and answered.charged is not None
        # One node answered: each combined cell is that node's own noisy value.
        own = {cell.group: cell.value for cell in answered.answer.cells}
        assert {cell.group: cell.estimate for cell in partial.cells} == pytest.approx(own)
        assert all(cell.nodes == 1 for cell in partial.cells)
        doc: dict[str, Any] = json.loads(federated_json(partial))
        assert doc["coverage"] == {"answered": ["answers"], "total": 4}
        assert {n["node"]: n["status"] for n in doc["nodes"]} == {
            "answers": "answered",
            "down": "unreachable",
            "slow": "unreachable",
            "refuses": "refused",
        }
        assert mirrored(mirror, partial.query_id) == {
            "answers": ("answered", answered.charged),
            "down": ("unreachable", None),
            "slow": ("unreachable", None),
            "refuses": ("refused", None),
        }
        spent = answers.budget().lifetime_spent
        assert spent == answered.charged

        all_or_nothing, seconds = timed(
            lambda: ask_federation(
                federation, query, analyst="ana", mirror=mirror, require_all=True
            )
        )
        assert seconds < deadline + SLACK, f"took {seconds:.2f}s with a {deadline}s deadline"
        assert not all_or_nothing.released
        assert all_or_nothing.cells == ()
        assert statuses(all_or_nothing) == {
            "answers": NodeStatus.SKIPPED,
            "down": NodeStatus.UNREACHABLE,
            "slow": NodeStatus.UNREACHABLE,
            "refuses": NodeStatus.REFUSED,
        }
        assert json.loads(federated_json(all_or_nothing))["cells"] == []
        assert mirrored(mirror, all_or_nothing.query_id) == {
            "answers": ("skipped", None),
            "down": ("unreachable", None),
            "slow": ("unreachable", None),
            "refuses": ("refused", None),
        }
        assert answers.budget().lifetime_spent == spent, "require_all charged a node"
        node_spent = {"answers": spent}
        for name, node in (("slow", slow), ("refuses", refuses)):
            node_spent[name] = node.budget().lifetime_spent
            assert node_spent[name] == 0
        assert spending_disagreements(mirror.spent_by_node(), node_spent) == []


@pytest.mark.parametrize("require_all", [False, True], ids=["partial", "require-all"])
def test_an_answer_after_the_deadline_is_charged_and_reasking_reconciles(
    require_all: bool,
    tmp_path: Path,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    synth_csv: Path,
    pki: FederationPki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deadline, retries = 1.0, 1
    prompt = start_node(make_node_config(node_id="ngo-prompt", policy=POLICY), synth_csv)
    late = start_node(make_node_config(node_id="ngo-late", policy=POLICY), synth_csv)
    service = late.running.service
    answer_now = service.query

    def answer_late(
        identity: str,
        query_id: str,
        analyst: str,
        query: Query,
        grant: CoordinatorGrant | None = None,
    ) -> Released:
        time.sleep(deadline + 0.5)  # plans promptly, answers (and charges) after the deadline
        return answer_now(identity, query_id, analyst, query, grant)

    monkeypatch.setattr(service, "query", answer_late)
    config = federation_config(
        pki,
        tmp_path / "mirror.sqlite",
        [("prompt", prompt.address, "ngo-prompt"), ("late", late.address, "ngo-late")],
        timeout=deadline,
        retries=retries,
    )
    query = Query(QueryKind.COUNT_CLIENTS, eps("0.4"), group_by=("region",))
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
        first, seconds = timed(
            lambda: ask_federation(
                federation, query, analyst="ana", mirror=mirror, require_all=require_all
            )
        )
        budget = (retries + 1) * deadline + sum(BACKOFF_SECONDS * 2**i for i in range(retries))
        assert seconds < budget + SLACK, f"took {seconds:.2f}s; at most {budget}s expected"
        assert statuses(first) == {"prompt": NodeStatus.ANSWERED, "late": NodeStatus.UNREACHABLE}
        assert first.answered_nodes == ("prompt",)
        # Both passed pre-flight, so both were asked (and prompt charged); with
        # require_all nothing is released because late did not answer in time.
        assert first.released is not require_all
        assert (first.cells == ()) is require_all
        [late_outcome] = [o for o in first.outcomes if o.node == "late"]
        assert late_outcome.attempts == retries + 1
        # The late node answered after the client gave up: it has charged, once.
        wait_for(lambda: len(service.ledger.entries()) == 1, "the late node to charge")
        [entry] = service.ledger.entries()
        assert entry.query_id == first.query_id
        assert mirrored(mirror, first.query_id)["late"] == ("unreachable", None)
        node_spent = {
            "prompt": prompt.budget().lifetime_spent,
            "late": late.budget().lifetime_spent,
        }
        [gap] = spending_disagreements(mirror.spent_by_node(), node_spent)
        assert (gap.node, gap.mirror_spent, gap.node_spent) == ("late", Fraction(0), entry.charge)

        monkeypatch.undo()  # the late node is prompt again
        again = ask_federation(
            federation,
            query,
            analyst="ana",
            mirror=mirror,
            query_id=first.query_id,
            require_all=require_all,
        )
        assert again.released
        assert [cell.nodes for cell in again.cells] == [2] * len(again.cells) != []
        assert statuses(again) == {"prompt": NodeStatus.REPLAYED, "late": NodeStatus.REPLAYED}
        [prompt_first] = [o.answer for o in first.outcomes if o.node == "prompt"]
        [prompt_again] = [o.answer for o in again.outcomes if o.node == "prompt"]
        assert prompt_first is not None and prompt_again is not None
        assert prompt_again.cells == prompt_first.cells
        [late_again] = [o for o in again.outcomes if o.node == "late"]
        assert late_again.charged == entry.charge
        assert late_again.answer is not None
        assert late_again.answer.cells == stored_answer(late, query, first.query_id).cells
        assert mirrored(mirror, first.query_id) == {
            "prompt": ("replayed", prompt_first.charged.amount),
            "late": ("replayed", entry.charge),
        }
        node_spent = {
            "prompt": prompt.budget().lifetime_spent,
            "late": late.budget().lifetime_spent,
        }
        assert spending_disagreements(mirror.spent_by_node(), node_spent) == []
        assert (
            len(service.ledger.entries()) == 1 and len(prompt.running.service.ledger.entries()) == 1
        )
