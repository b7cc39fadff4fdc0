"""SIGKILL, again and again: neither a node nor the coordinator may lose or invent a charge.

Node: a real ``tiaki-node serve`` (mutual TLS) answers a burst of concurrent
queries from several threads; at a random moment (seeded, so a failure can be
replayed) it is SIGKILLed and restarted on the same data directory. After every
kill the ledger must open and verify, hold an entry for every answer the
client received (same id, identity and charge) and none for anything the
client did not send, spend exactly the sum of its entries, and the record
store must still load at the same version. After every restart each query id
of the killed burst is retried: a received one comes back replayed with the
identical cells and no new charge.

Coordinator: a coordinator process asks three nodes question after question
and is SIGKILLed at random moments. Its mirror ledger must open, hold an intent
(naming every node) for every question any node charged, and record each
node's outcome or leave it ``pending``; the node's spending minus the mirror's
is exactly the charges whose replies died with the coordinator. Re-asking the
pending questions under their own ids completes them with replays, after which
mirror and nodes agree exactly.

The ``slow`` variants do the same with many more kills.
"""

from __future__ import annotations

import itertools
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO

import grpc
import pytest
import yaml

from coordinator.client import NodeClient
from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import PENDING, MirrorLedger, MirrorQuestion, spending_disagreements
from coordinator.results import NodeStatus
from node.config import NodeConfig, load_config
from node.ledger import LedgerEntry, PrivacyLedger
from node.store import load_dataset, store_version
from tests.conftest import FederationPki, write_node_config
from tests.integration.conftest import LiveNode
from tests.integration.crash_coordinator import query_index, question
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.errors import TiakiError
from tiaki.query import InSet, PrivacyCost, Query, QueryKind
from tiaki.wire_errors import status_code_of

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IDENTITY = "coordinator-a"  # the common name of the certificate the clients present
ANALYST = "crash-test"
WORKERS = 6
POLICY = {"budget": {"limit": "100000", "period": "none"}, "per_query_max": "1"}
SERVER = {"max_workers": 8, "max_concurrent_per_identity": 8}


def eps(text: str) -> PrivacyCost:
    return PrivacyCost.parse(PrivacyDefinition.PURE, text)


# Several kinds and costs, so that charges (and their exact sum) are not all alike.
NODE_QUERIES = (
    Query(QueryKind.COUNT, eps("0.01"), group_by=("service",)),
    Query(QueryKind.COUNT_CLIENTS, eps("0.02")),
    Query(QueryKind.MEAN, eps("0.03"), column="sessions"),
    Query(QueryKind.COUNT, eps("0.015"), filters=(InSet("region", ("auckland", "waikato")),)),
)


# ---------------------------------------------------------------- node processes


class ServeProcess:
    """``tiaki-node serve`` in a child process; its log goes to a file, not a pipe."""

    def __init__(self, config: Path, log: IO[str]) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "tiaki-node"), "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"serving on (\S+)", line)
        if not match:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"node did not start: {line!r}; see its log")
        self.address = match.group(1)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL

    def sigterm(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def serving(config: Path, log: IO[str]) -> Iterator[ServeProcess]:
    node = ServeProcess(config, log)
    try:
        yield node
    finally:
        node.ensure_dead()


def tls_client(pki: FederationPki, address: str, timeout: float = 10.0) -> NodeClient:
    return NodeClient(
        address,
        identity=IDENTITY,
        timeout=timeout,
        credentials=pki.channel_credentials(IDENTITY),
        server_name="ngo-test",
    )


@dataclass
class Burst:
    """Several threads asking distinct query ids as fast as they can until the node dies."""

    pki: FederationPki
    address: str
    tag: str
    sent: dict[str, Query] = field(default_factory=dict)
    received: dict[str, Answer] = field(default_factory=dict)
    errors: list[tuple[float, TiakiError]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for worker in range(WORKERS):
            thread = threading.Thread(target=self._work, args=(worker,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _work(self, worker: int) -> None:
        with tls_client(self.pki, self.address) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                query_id = f"{self.tag}-w{worker}-{i}"
                query = NODE_QUERIES[(worker + i) % len(NODE_QUERIES)]
                with self._lock:
                    self.sent[query_id] = query
                try:
                    answer = client.query(query, query_id=query_id, analyst=ANALYST)
                except TiakiError as exc:
                    with self._lock:
                        self.errors.append((time.monotonic(), exc))
                    return
                with self._lock:
                    self.received[query_id] = answer

    def join(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a client thread hung after the node died"


def check_ledger(
    config: NodeConfig, sent: dict[str, Query], received: dict[str, Answer]
) -> dict[str, LedgerEntry]:
    """The ledger after a kill, opened offline: sound, complete, and nothing invented."""
    with PrivacyLedger.open(config.data_dir / "ledger.sqlite", config.policy) as ledger:
        ledger.verify()
        entries = ledger.entries()
        spent = ledger.status().lifetime_spent
    by_id: dict[str, LedgerEntry] = {}
    for entry in entries:
        assert entry.query_id in sent, f"entry {entry.query_id} for a query nobody sent"
        assert entry.query_id not in by_id, f"{entry.query_id} charged twice"
        assert (entry.identity, entry.analyst) == (IDENTITY, ANALYST)
        assert entry.canonical_query == sent[entry.query_id].canonical()
        by_id[entry.query_id] = entry
    for query_id, answer in received.items():
        found = by_id.get(query_id)
        assert found is not None, f"the client received {query_id} but the ledger lost its charge"
        assert found.charge == answer.charged.amount, query_id
        assert found.dataset_version == answer.dataset_version, query_id
    assert spent == sum((e.charge for e in entries), Fraction(0))
    return by_id


def retry_all(
    client: NodeClient,
    sent: dict[str, Query],
    received: dict[str, Answer],
    charged: dict[str, LedgerEntry],
) -> dict[str, Answer]:
    """Retry every id of a killed burst; return the answers to ids not received before.

    An id charged before the kill comes back replayed (with the first answer's
    cells if the client had it); an id the kill caught before its charge is
    answered afresh now, and that is the only new spending.
    """

    def retry(item: tuple[str, Query]) -> tuple[str, Answer]:
        query_id, query = item
        return query_id, client.query(query, query_id=query_id, analyst=ANALYST)

    before = client.budget().lifetime_spent
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(retry, sent.items()))
    recovered: dict[str, Answer] = {}
    fresh = Fraction(0)
    for query_id, answer in results:
        entry = charged.get(query_id)
        if entry is None:  # the kill came before its charge committed: it is new now
            assert not answer.replayed, query_id
            assert query_id not in received
            recovered[query_id] = answer
            fresh += answer.charged.amount
            continue
        assert answer.replayed, f"{query_id} was charged before the kill but answered afresh"
        assert answer.charged.amount == entry.charge, query_id
        assert answer.canonical_query == entry.canonical_query, query_id
        if query_id in received:
            first = received[query_id]
            assert answer.cells == first.cells, f"{query_id}: a replay with different noise"
            assert answer.dataset_version == first.dataset_version
        else:  # charged, but the reply died with the node: the retry delivers it
            recovered[query_id] = answer
    after = client.budget().lifetime_spent
    assert after - before == fresh, "replays must not charge"
    return recovered


@pytest.mark.parametrize(
    "rounds",
    [pytest.param(6, id="6-kills"), pytest.param(30, id="30-kills", marks=pytest.mark.slow)],
)
def test_sigkill_node_mid_burst_loses_and_invents_nothing(
    tmp_path: Path, synth_csv: Path, pki: FederationPki, rounds: int
) -> None:
    rng = random.Random(7100 + rounds)
    config_path = write_node_config(tmp_path / "ngo", policy=POLICY, pki=pki, server=SERVER)
    imported = subprocess.run(
        [str(BIN / "tiaki-node"), "import", "--config", str(config_path), str(synth_csv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    config = load_config(config_path)
    version = store_version(config)
    assert version

    all_sent: dict[str, Query] = {}
    all_received: dict[str, Answer] = {}
    last: Burst | None = None
    charged: dict[str, LedgerEntry] = {}
    lost_replies = never_charged = 0
    with (tmp_path / "node.log").open("a", encoding="utf-8") as log:
        for round_ in range(rounds + 1):
            with serving(config_path, log) as node:
                if last is not None:
                    with tls_client(pki, node.address) as client:
                        recovered = retry_all(client, last.sent, last.received, charged)
                    all_received.update(recovered)
                    never_charged += sum(1 for a in recovered.values() if not a.replayed)
                    lost_replies += sum(1 for a in recovered.values() if a.replayed)
                if round_ == rounds:
                    assert node.sigterm() == 0
                    break
                burst = Burst(pki, node.address, f"r{round_}")
                burst.start()
                time.sleep(rng.uniform(0.02, 0.7))
                killed_at = time.monotonic()
                node.sigkill()
                burst.join()
            early = [exc for at, exc in burst.errors if at < killed_at]
            assert not early, f"queries failed before the kill: {early}"
            assert not any(a.replayed for a in burst.received.values())
            assert all(
                status_code_of(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
                for _, exc in burst.errors
            ), [status_code_of(exc) for _, exc in burst.errors]
            all_sent.update(burst.sent)
            all_received.update(burst.received)
            charged = check_ledger(config, all_sent, all_received)
            assert store_version(config) == version
            assert load_dataset(config).version == version
            last = burst

    final = check_ledger(config, all_sent, all_received)
    assert set(final) == set(all_received), "after retries every charged id was answered"
    assert all_received, "no query was answered in any round"
    print(
        f"{rounds} kills: {len(all_sent)} queries sent, {len(final)} charged, "
        f"{lost_replies} replies lost to a kill after the charge, {never_charged} killed "
        "before the charge"
    )


# ---------------------------------------------------------------- the coordinator


def settle(nodes: list[LiveNode]) -> None:
    """Wait until no node is still answering a question from the killed coordinator."""
    last: list[int] = []
    deadline = time.monotonic() + 20
    while True:
        counts = [len(n.running.service.ledger.entries()) for n in nodes]
        if counts == last:
            return
        assert time.monotonic() < deadline, "the nodes never settled"
        last = counts
        time.sleep(0.3)


def check_mirror(
    mirror_path: Path, nodes: list[LiveNode], asked: set[str], done: set[str]
) -> tuple[dict[str, MirrorQuestion], int]:
    """Mirror after a kill: an intent before every charge, outcomes recorded or pending.

    Returns the questions and how many node charges the mirror has not recorded.
    """
    names = [n.config.node_id for n in nodes]
    with MirrorLedger(mirror_path) as mirror:
        questions = {q.query_id: q for q in mirror.questions()}
        spent = mirror.spent_by_node()
    assert set(questions) <= asked, "an intent for a question the coordinator never asked"
    for query_id in done:
        assert not questions[query_id].pending_nodes, f"{query_id} finished but is pending"
    for query_id, q in questions.items():
        assert [o.node for o in q.outcomes] == names, "an intent must name every node"
        assert q.canonical_query == question(query_index(query_id)).canonical()
        assert q.identity == IDENTITY
        for outcome in q.outcomes:
            assert outcome.status in (PENDING, NodeStatus.ANSWERED, NodeStatus.REPLAYED), outcome
            assert (outcome.charged is None) == outcome.pending, outcome
    lost = 0
    for node in nodes:
        name = node.config.node_id
        entries = {e.query_id: e for e in node.running.service.ledger.entries()}
        assert set(entries) <= set(questions), f"{name} charged a question with no intent"
        unrecorded = Fraction(0)
        for query_id, q in questions.items():
            outcome = next(o for o in q.outcomes if o.node == name)
            entry = entries.get(query_id)
            if outcome.charged is not None:
                assert entry is not None, f"the mirror has a charge {name} never made"
                assert entry.charge == outcome.charged
            elif entry is not None:
                unrecorded += entry.charge  # charged; the reply died with the coordinator
                lost += 1
        node_spent = node.budget().lifetime_spent
        mirror_spent = spent.get(name, Fraction(0))
        assert mirror_spent <= node_spent, name
        assert node_spent - mirror_spent == unrecorded, name
    return questions, lost


def reask_pending(
    federation_path: Path, mirror_path: Path, nodes: list[LiveNode], questions: list[MirrorQuestion]
) -> None:
    """Complete every pending question under its own id; then mirror == nodes exactly."""
    before = {
        n.config.node_id: {e.query_id: e for e in n.running.service.ledger.entries()} for n in nodes
    }
    config = load_federation(federation_path)
    with Federation(config) as federation, MirrorLedger(mirror_path) as mirror:
        for q in questions:
            if not q.pending_nodes:
                continue
            answer = ask_federation(
                federation,
                question(query_index(q.query_id)),
                analyst=config.analyst,
                mirror=mirror,
                query_id=q.query_id,
            )
            for outcome in answer.outcomes:
                entry = before[outcome.node].get(q.query_id)
                if entry is None:
                    assert outcome.status is NodeStatus.ANSWERED, outcome
                else:
                    assert outcome.status is NodeStatus.REPLAYED, outcome
                    assert outcome.charged == entry.charge
        assert not any(q.pending_nodes for q in mirror.questions())
        node_spent = {n.config.node_id: n.budget().lifetime_spent for n in nodes}
        assert spending_disagreements(mirror.spent_by_node(), node_spent) == []


@pytest.mark.parametrize(
    "rounds",
    [pytest.param(6, id="6-kills"), pytest.param(25, id="25-kills", marks=pytest.mark.slow)],
)
def test_sigkill_coordinator_mid_question_mirror_stays_reconcilable(
    tmp_path: Path,
    synth_csv: Path,
    pki: FederationPki,
    make_node_config: Callable[..., Path],
    start_node: Callable[..., LiveNode],
    rounds: int,
) -> None:
    rng = random.Random(9100 + rounds)
    nodes = [
        start_node(make_node_config(node_id=f"ngo-{x}", policy=POLICY, server=SERVER), synth_csv)
        for x in "abc"
    ]
    mirror_path = tmp_path / "mirror.sqlite"
    federation_path = tmp_path / "federation.yaml"
    federation_path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "analyst": ANALYST,
                "identity": IDENTITY,
                "ledger": str(mirror_path),
                "defaults": {"timeout_seconds": 10, "retries": 2},
                "tls": pki.federation_tls(IDENTITY),
                "nodes": [{"name": n.config.node_id, "address": n.address} for n in nodes],
            }
        ),
        encoding="utf-8",
    )
    asked: set[str] = set()
    done: set[str] = set()
    left_pending = lost_replies = 0
    for round_ in range(rounds):
        child = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "crash_coordinator.py"),
                str(federation_path),
                f"r{round_}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.8))
            child.send_signal(signal.SIGKILL)
            assert child.wait(10) == -signal.SIGKILL
            for line in child.stdout.read().splitlines():
                what, _, query_id = line.partition(" ")
                (asked if what == "asking" else done).add(query_id)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            if child.stdout is not None:
                child.stdout.close()
        settle(nodes)
        questions, lost = check_mirror(mirror_path, nodes, asked, done)
        lost_replies += lost
        left_pending += sum(1 for q in questions.values() if q.pending_nodes)
        reask_pending(federation_path, mirror_path, nodes, list(questions.values()))
    assert done, "the coordinator never finished a question"
    print(
        f"{rounds} kills: {len(asked)} questions, {left_pending} left pending and re-asked, "
        f"{lost_replies} node charges whose reply died with the coordinator"
    )
