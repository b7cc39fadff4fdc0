"""Secure sums beside per-node answers over N real node processes: latency, CPU and traffic.

Run with::

    .venv/bin/python -m tests.bench.bench_secure [--nodes 5,20] [--clients 2000] [--runs 5]
                                                   [--rho 0.1]

For each N a fresh federation of ``deploy/local_federation.py`` is started
with ``secure=True``: N ``tiaki-node serve`` processes on loopback over mutual
TLS, in zCDP, each pinning the others' ledger keys, each with ``--clients``
synthetic clients of its own (about three records each). One question, a
count of records by ``region`` (16 cells) at ρ = ``--rho``, is asked
``--runs`` times each way on one warm ``Federation`` and mirror, a fresh query
id every time, the two ways taking turns after one untimed warm-up each:

- as a secure sum, with :func:`coordinator.secure_question.ask_secure`
  (``GetInfo`` and ``Plan`` of every node, the mirror's intent, the five
  rounds, the decoding and the combination);
- per node, with :func:`coordinator.federated.ask_federation` (pre-flight
  ``Plan``, the mirror's intent, one ``Query`` per node, combination).

Measured per question: the wall time (median of the runs); the CPU of the
node processes (``utime + stime`` from ``/proc/PID/stat`` of every member,
read before and after each question; the mean per node); the coordinator's
CPU (``time.process_time()`` around the question: this process, every thread).

Traffic is counted in one more secure session on the same nodes, driven by
:func:`coordinator.secure_sum.run_session` with the parameters
:func:`~coordinator.secure_question.plan_secure` chose, through wrappers of
the federation's own ``NodeClient`` that rebuild each round's request and
reply with the conversions of :mod:`tiaki.secagg.wire` (the ones the client
sends and reads) and add up their ``ByteSize()``: protobuf payloads, without
gRPC's 5-byte message prefix, HTTP/2 headers or TLS records. The same session
times each round (first call sent to last reply in). Its per-round bytes give
a line ``a + b·N`` per round (each message carries the session's roster and
up to one item per member), from which traffic at N = 200 and 1,000 is
projected; the coordinator relays the sum over nodes, ``N·(a + b·N)``, O(N²).

Every question charges each node ρ, and its share alone (the worst case, every
other member colluding) about h·ρ, h the session's honest shares; the local
federation's budget (5 a year, 20 for life; 1 per question) and worst-case
caps (10 per question, 100 for life) bound the runs and ρ, checked before
asking. The tables go to stdout and to ``bench-results/secure.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from threading import Lock
from typing import TypeVar

import numpy as np

from coordinator.client import NodeClient, new_query_id
from coordinator.config import load_federation
from coordinator.fanout import Federation
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from coordinator.results import FederatedAnswer
from coordinator.secure_question import SecurePlan, ask_secure, plan_secure, session_of
from coordinator.secure_sum import run_session
from deploy import local_federation
from deploy.local_federation import NgoSpec, RunningNgo
from node.config import load_config
from tests.bench.workload import environment, row
from tiaki.budget import PrivacyDefinition, display_amount
from tiaki.query import PrivacyCost, Query, QueryKind
from tiaki.secagg.session import (
    KeyAdvert,
    MaskedInput,
    Reveal,
    SealedShares,
    SessionParameters,
)
from tiaki.secagg.wire import (
    advert_to_proto,
    masked_input_to_proto,
    reveal_to_proto,
    sealed_to_proto,
    session_to_proto,
)
from tiaki.v1 import node_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
ANALYST = local_federation.ANALYST
ROUNDS = ("advertise", "share_keys", "masked_input", "consistency", "unmask")
RPCS = {
    "advertise": "SecureAdvertise",
    "share_keys": "SecureShareKeys",
    "masked_input": "SecureMaskedInput",
    "consistency": "SecureConsistency",
    "unmask": "SecureUnmask",
}
PROJECT_TO = (200, 1000)
TRAFFIC_MARK = 20_000  # bytes per node per question (20 KB, 1 KB = 1,000 bytes)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def count_by_region(rho: Fraction) -> Query:
    return Query(QueryKind.COUNT, PrivacyCost(PrivacyDefinition.ZCDP, rho), group_by=("region",))


def specs(count: int, clients: int) -> tuple[NgoSpec, ...]:
    """The local federation's NGOs (names ngo-a..), numbered past its 26 letters."""
    if count <= 26:
        return local_federation.specs_for(count, clients)
    return tuple(NgoSpec(f"ngo-{i + 1:03d}", clients, 100 + i) for i in range(count))


# ---------------------------------------------------------------- what a question costs


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def csv_records(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f) - 1  # its header line


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Costs:
    """Per question: wall ms, the coordinator's CPU ms, and the mean CPU ms of a node."""

    wall_ms: list[float] = field(default_factory=list)
    coordinator_cpu_ms: list[float] = field(default_factory=list)
    node_cpu_ms: list[float] = field(default_factory=list)

    def add(self, pids: Sequence[int], call: Callable[[], T]) -> T:
        nodes0 = [cpu_seconds(pid) for pid in pids]
        cpu0 = time.process_time()
        start = time.perf_counter_ns()
        result = call()
        wall = (time.perf_counter_ns() - start) / 1e6
        cpu = (time.process_time() - cpu0) * 1e3
        nodes = [cpu_seconds(pid) - before for pid, before in zip(pids, nodes0, strict=True)]
        self.wall_ms.append(wall)
        self.coordinator_cpu_ms.append(cpu)
        self.node_cpu_ms.append(statistics.fmean(nodes) * 1e3)
        return result


# ---------------------------------------------------------------- traffic, by round


@dataclass
class RoundTraffic:
    """One round of one session: bytes each member received and sent, and its wall time."""

    received: dict[int, int] = field(default_factory=dict)  # request ByteSize, by member
    sent: dict[int, int] = field(default_factory=dict)  # reply ByteSize, by member
    first_sent: float = math.inf
    last_reply: float = 0.0

    @property
    def wall_ms(self) -> float:
        return (self.last_reply - self.first_sent) * 1e3

    def mean_received(self) -> float:
        return statistics.fmean(self.received.values())

    def mean_sent(self) -> float:
        return statistics.fmean(self.sent.values())


class Traffic:
    """What every counting link saw, by round (their calls run in threads at once)."""

    def __init__(self) -> None:
        self.rounds = {name: RoundTraffic() for name in ROUNDS}
        self._lock = Lock()

    def record(
        self, name: str, index: int, request: int, reply: int, sent: float, back: float
    ) -> None:
        with self._lock:
            r = self.rounds[name]
            r.received[index] = request
            r.sent[index] = reply
            r.first_sent = min(r.first_sent, sent)
            r.last_reply = max(r.last_reply, back)

    def per_node(self) -> float:
        """Bytes one node receives and sends in the whole session, averaged over nodes."""
        return sum(r.mean_received() + r.mean_sent() for r in self.rounds.values())


class CountingLink:
    """A member's ``NodeClient``, with each round's request and reply sizes recorded.

    The request and the reply are rebuilt as the client builds and reads them
    (``coordinator/client.py``), with the same conversions; the time around
    the call is the client's own.
    """

    def __init__(self, index: int, client: NodeClient, traffic: Traffic) -> None:
        self.index = index
        self.client = client
        self.traffic = traffic

    def _timed(self, name: str, request: int, call: Callable[[], T], size: Callable[[T], int]) -> T:
        sent = time.perf_counter()
        result = call()
        back = time.perf_counter()
        self.traffic.record(name, self.index, request, size(result), sent, back)
        return result

    def advertise(self, params: SessionParameters) -> KeyAdvert:
        request = pb.SecureAdvertiseRequest(session=session_to_proto(params))
        return self._timed(
            "advertise",
            request.ByteSize(),
            lambda: self.client.advertise(params),
            lambda advert: advert_to_proto(advert).ByteSize(),
        )

    def share_keys(
        self, params: SessionParameters, adverts: Sequence[KeyAdvert]
    ) -> Sequence[SealedShares]:
        request = pb.SecureShareKeysRequest(
            session=session_to_proto(params), adverts=[advert_to_proto(a) for a in adverts]
        )
        return self._timed(
            "share_keys",
            request.ByteSize(),
            lambda: self.client.share_keys(params, adverts),
            lambda shares: pb.SecureShareKeysResponse(
                shares=[sealed_to_proto(s) for s in shares]
            ).ByteSize(),
        )

    def masked_input(
        self, params: SessionParameters, sealed: Sequence[SealedShares]
    ) -> MaskedInput:
        request = pb.SecureMaskedInputRequest(
            session=session_to_proto(params), shares=[sealed_to_proto(s) for s in sealed]
        )
        return self._timed(
            "masked_input",
            request.ByteSize(),
            lambda: self.client.masked_input(params, sealed),
            lambda masked: masked_input_to_proto(masked).ByteSize(),
        )

    def consistency(self, params: SessionParameters, survivors: Sequence[int]) -> str:
        request = pb.SecureConsistencyRequest(
            session=session_to_proto(params), survivors=list(survivors)
        )
        # The node's reply carries its index beside the signature; the client keeps the latter.
        return self._timed(
            "consistency",
            request.ByteSize(),
            lambda: self.client.consistency(params, survivors),
            lambda signature: pb.SurvivorSignature(
                index=self.index, signature=signature
            ).ByteSize(),
        )

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
        return self._timed(
            "unmask",
            request.ByteSize(),
            lambda: self.client.unmask(params, survivors, signatures),
            lambda reveal: reveal_to_proto(reveal).ByteSize(),
        )


def counted_session(federation: Federation, query: Query) -> tuple[Traffic, float, int]:
    """One more secure session, as ask_secure runs it, over counting links.

    Returns the traffic, the session's wall ms, and how many inputs were summed.
    """
    query_id = new_query_id()
    plan = plan_secure(federation, query, query_id)
    params = session_of(plan, query_id, query, ANALYST, 300)
    traffic = Traffic()
    links = {
        i: CountingLink(i, federation.clients[m.name], traffic)
        for i, m in enumerate(plan.members, start=1)
    }
    start = time.perf_counter()
    result = run_session(params, links)
    return traffic, (time.perf_counter() - start) * 1e3, len(result.survivors)


# ---------------------------------------------------------------- one federation size


@dataclass(frozen=True)
class Row:
    nodes: int
    clients: int
    records: int  # per node, mean
    startup_s: float
    rss_mb: float  # the node processes together, after start
    threshold: int
    honest: int
    secure: Costs
    per_node: Costs
    traffic: Traffic
    session_ms: float
    secure_half_width: float  # median 95% half-width of a cell
    per_node_half_width: float


def _check_fits(plan: SecurePlan, nodes: Sequence[RunningNgo], rho: Fraction, runs: int) -> None:
    """That the local federation's budgets and worst-case caps allow every question."""
    policy = load_config(nodes[0].config).policy
    secure = policy.secure_aggregation
    assert secure is not None
    sessions = runs + 2  # a warm-up, the runs, and the counted session
    spent = rho * (sessions + runs + 1)  # and as many per-node questions but one
    worst = rho * plan.honest  # about what one share alone costs
    limits = [policy.budget.limit]
    if policy.budget.lifetime_limit is not None:
        limits.append(policy.budget.lifetime_limit)
    problems = []
    if rho > policy.per_query_max:
        problems.append(
            f"ρ {display_amount(rho)} is above the nodes' per-query maximum "
            f"{display_amount(policy.per_query_max)}"
        )
    if spent > min(limits):
        problems.append(
            f"{display_amount(spent)} of ρ is more than the nodes' budget of "
            f"{display_amount(min(limits))}"
        )
    if worst > secure.worst_case.per_query:
        problems.append(
            f"each share's worst case, about {plan.honest} × {display_amount(rho)} = "
            f"{display_amount(worst)}, is above the nodes' worst-case cap of "
            f"{display_amount(secure.worst_case.per_query)} per question"
        )
    if worst * sessions > secure.worst_case.lifetime:
        problems.append(
            f"{sessions} sessions' worst cases, about {display_amount(worst * sessions)}, are "
            f"above the nodes' worst-case lifetime cap of "
            f"{display_amount(secure.worst_case.lifetime)}"
        )
    if problems:
        raise SystemExit(
            f"{len(nodes)} nodes: " + "; ".join(problems) + ": give a smaller --rho or --runs"
        )


def _released(answer: FederatedAnswer, nodes: int, secure: bool) -> FederatedAnswer:
    if secure:
        summary = answer.secure
        if not answer.released or summary is None or summary.summed != nodes:
            raise RuntimeError(f"the secure sum did not sum every node: {summary}")
    elif len(answer.answered_nodes) != nodes:
        raise RuntimeError(f"not every node answered: {answer.coverage}")
    return answer


def measure_row(nodes: int, clients: int, runs: int, rho: Fraction, parent: Path) -> Row:
    query = count_by_region(rho)
    workdir = Path(tempfile.mkdtemp(prefix=f"secure-{nodes}-", dir=parent))
    print(f"{nodes} nodes × {clients:,} clients: setting up and starting ...", flush=True)
    start = time.perf_counter()
    running = local_federation.start(workdir, specs(nodes, clients), secure=True)
    try:
        startup_s = time.perf_counter() - start
        pids = [node.process.pid for node in running]
        memory = sum(rss_mb(pid) for pid in pids)
        records = statistics.fmean(
            csv_records(workdir / f"{n.spec.name}-clients.csv") for n in running
        )
        print(f"  started in {startup_s:.1f} s; nodes' RSS {memory:,.0f} MB", flush=True)
        config = load_federation(local_federation.write_federation(workdir, running))
        secure, per_node = Costs(), Costs()
        with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
            plan = plan_secure(federation, query)
            _check_fits(plan, running, rho, runs)

            def ask_secure_once() -> FederatedAnswer:
                answer = ask_secure(federation, query, analyst=ANALYST, mirror=mirror)
                return _released(answer, nodes, secure=True)

            def ask_per_node_once() -> FederatedAnswer:
                answer = ask_federation(federation, query, analyst=ANALYST, mirror=mirror)
                return _released(answer, nodes, secure=False)

            ask_secure_once()  # warm-up: channels, the nodes' first session
            ask_per_node_once()
            for i in range(runs):
                last_secure = secure.add(pids, ask_secure_once)
                last_per_node = per_node.add(pids, ask_per_node_once)
                print(
                    f"  run {i + 1}/{runs}: secure {secure.wall_ms[-1]:.0f} ms, "
                    f"per node {per_node.wall_ms[-1]:.0f} ms",
                    flush=True,
                )
            traffic, session_ms, summed = counted_session(federation, query)
            if summed != nodes:
                raise RuntimeError(f"the counted session summed {summed} of {nodes} inputs")
    finally:
        local_federation.stop(running)
        shutil.rmtree(workdir, ignore_errors=True)
    return Row(
        nodes=nodes,
        clients=clients,
        records=round(records),
        startup_s=startup_s,
        rss_mb=memory,
        threshold=plan.threshold,
        honest=plan.honest,
        secure=secure,
        per_node=per_node,
        traffic=traffic,
        session_ms=session_ms,
        secure_half_width=statistics.median(c.half_width for c in last_secure.cells),
        per_node_half_width=statistics.median(c.half_width for c in last_per_node.cells),
    )


# ---------------------------------------------------------------- report


def kb(value: float) -> str:
    return f"{value / 1000:,.1f}"


def ms(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def results_table(rows: Sequence[Row]) -> Iterator[str]:
    yield row(
        [
            "nodes",
            "clients / node (records)",
            "runs",
            "secure: median ms",
            "per node: median ms",
            "secure / per node",
            "node CPU ms / question: secure / per node",
            "coordinator CPU ms / question: secure / per node",
            "per node per secure question: received / sent KB",
            "coordinator relays KB / secure question",
            "95% half-width: secure / per node",
        ]
    )
    yield row(["---:", "---:", "---:", *["---:"] * 8])
    for r in rows:
        secure = statistics.median(r.secure.wall_ms)
        per_node = statistics.median(r.per_node.wall_ms)
        received = sum(t.mean_received() for t in r.traffic.rounds.values())
        sent = sum(t.mean_sent() for t in r.traffic.rounds.values())
        yield row(
            [
                str(r.nodes),
                f"{r.clients:,} ({r.records:,})",
                str(len(r.secure.wall_ms)),
                ms(secure),
                ms(per_node),
                f"{secure / per_node:.1f}×",
                f"{ms(statistics.fmean(r.secure.node_cpu_ms))} / "
                f"{ms(statistics.fmean(r.per_node.node_cpu_ms))}",
                f"{ms(statistics.fmean(r.secure.coordinator_cpu_ms))} / "
                f"{ms(statistics.fmean(r.per_node.coordinator_cpu_ms))}",
                f"{kb(received)} / {kb(sent)}",
                kb(r.nodes * (received + sent)),
                f"{r.secure_half_width:.1f} / {r.per_node_half_width:.1f}",
            ]
        )


def rounds_table(rows: Sequence[Row]) -> Iterator[str]:
    yield row(
        [
            "round (RPC)",
            *(f"{r.nodes} nodes: received / sent B per node, ms" for r in rows),
        ]
    )
    yield row(["---", *["---:"] * len(rows)])
    for name in ROUNDS:
        cells = []
        for r in rows:
            t = r.traffic.rounds[name]
            cells.append(f"{t.mean_received():,.0f} / {t.mean_sent():,.0f}, {ms(t.wall_ms)}")
        yield row([f"{name} (`{RPCS[name]}`)", *cells])
    yield row(
        [
            "whole session (`run_session`)",
            *(f"{r.traffic.per_node():,.0f} B, {ms(r.session_ms)}" for r in rows),
        ]
    )


@dataclass(frozen=True)
class Line:
    """Bytes per node in one round against N: ``a + b·N``."""

    a: float
    b: float

    def at(self, n: float) -> float:
        return self.a + self.b * n

    def text(self) -> str:
        a = 0.0 if abs(self.a) < 0.5 else self.a  # no "-0"
        b = 0.0 if abs(self.b) < 0.05 else self.b
        return f"{a:,.0f} {'−' if b < 0 else '+'} {abs(b):,.1f}·N"


def fit(rows: Sequence[Row], value: Callable[[RoundTraffic], float], name: str) -> Line:
    xs = [r.nodes for r in rows]
    ys = [value(r.traffic.rounds[name]) for r in rows]
    b, a = np.polyfit(xs, ys, 1)
    return Line(float(a), float(b))


def power(rows: Sequence[Row], values: Sequence[float], n: int) -> tuple[float, float]:
    """Through the smallest and largest N measured: (value at n, exponent)."""
    (n0, y0), (n1, y1) = (rows[0].nodes, values[0]), (rows[-1].nodes, values[-1])
    k = math.log(y1 / y0) / math.log(n1 / n0)
    return y1 * (n / n1) ** k, k


def projection(rows: Sequence[Row]) -> Iterator[str]:
    if len(rows) < 2:
        yield "One federation size measured: give two or more with --nodes for a projection."
        return
    lines = {
        name: (
            fit(rows, RoundTraffic.mean_received, name),
            fit(rows, RoundTraffic.mean_sent, name),
        )
        for name in ROUNDS
    }
    total = Line(
        sum(rx.a + tx.a for rx, tx in lines.values()),
        sum(rx.b + tx.b for rx, tx in lines.values()),
    )
    measured = ", ".join(str(r.nodes) for r in rows)
    yield row(["per node, bytes against N (fitted to N = " + measured + ")", "received", "sent"])
    yield row(["---", "---:", "---:"])
    for name, (rx, tx) in lines.items():
        yield row([name, rx.text(), tx.text()])
    yield ""
    latency = [statistics.median(r.secure.wall_ms) for r in rows]
    coordinator = [statistics.fmean(r.secure.coordinator_cpu_ms) for r in rows]
    node_cpu = [statistics.fmean(r.secure.node_cpu_ms) for r in rows]
    yield row(
        [
            "projected nodes",
            "per node KB / secure question",
            "coordinator relays MB",
            "secure median ms (power law)",
            "coordinator CPU ms (power law)",
            "node CPU ms (power law)",
        ]
    )
    yield row(["---:", *["---:"] * 5])
    exponents: tuple[float, float, float] = (0.0, 0.0, 0.0)
    for n in PROJECT_TO:
        wall, k_wall = power(rows, latency, n)
        coord, k_coord = power(rows, coordinator, n)
        cpu, k_cpu = power(rows, node_cpu, n)
        exponents = (k_wall, k_coord, k_cpu)
        per_node = total.at(n)
        yield row(
            [
                f"{n:,}",
                kb(per_node),
                f"{n * per_node / 1e6:,.1f}",
                ms(wall),
                ms(coord),
                ms(cpu),
            ]
        )
    yield ""
    crossing = math.ceil((TRAFFIC_MARK - total.a) / total.b) if total.b > 0 else None
    if crossing is None:
        yield "Per-node traffic does not grow with N in these measurements."
    else:
        where = "" if crossing > rows[0].nodes else " (already at the smallest N measured)"
        yield (
            f"Per-node traffic per secure question is about {total.a:,.0f} + {total.b:,.0f}·N "
            f"bytes: it passes {TRAFFIC_MARK // 1000} KB at N ≈ {max(crossing, 1):,}{where}. "
            f"The coordinator relays N times that, {total.b:,.0f}·N² + {total.a:,.0f}·N bytes. "
            f"Time and CPU are extrapolated on power laws through N = {rows[0].nodes} and "
            f"{rows[-1].nodes} (exponents: latency {exponents[0]:.2f}, coordinator CPU "
            f"{exponents[1]:.2f}, node CPU {exponents[2]:.2f}): a rough guide only, on one "
            "machine where every node shares the same cores."
        )


def report(rows: Sequence[Row], rho: Fraction, clients: int, machine: str) -> str:
    counts = ", ".join(str(r.nodes) for r in rows)
    notes = [
        f"Question: count of records by `region` (16 cells) at ρ = {display_amount(rho)} "
        "(zCDP), a fresh query "
        "id per run; secure with `ask_secure` (the session's defaults: colluders 0, dropouts "
        "N // 10, threshold N − dropouts), per node with `ask_federation`, on one warm "
        "`Federation` and mirror, alternating, after one untimed warm-up of each. Both include "
        "their pre-flight RPCs and durable mirror writes.",
        f"Nodes: `deploy/local_federation.py` with `secure=True`, {clients:,} synthetic clients "
        "per node (36,500 make about 100,000 records; the clients change only the nodes' "
        "counting, not the session's messages), each a `tiaki-node serve` process on loopback "
        "with mutual TLS, started fresh for each row: "
        + "; ".join(
            f"{r.nodes} nodes started in {r.startup_s:.1f} s, {r.rss_mb:,.0f} MB RSS together"
            for r in rows
        )
        + f". All of them and the coordinator share this machine's {os.cpu_count()} cores.",
        "CPU: node CPU is `utime + stime` (`/proc/PID/stat`, 1/"
        f"{CLOCK_TICKS} s ticks) of every member process over each question, averaged over "
        "the members and the runs; coordinator CPU is `time.process_time()` of this process "
        "(all threads, gRPC's included) around each question, averaged over the runs.",
        "Traffic: one more session per row, driven by `run_session` with `plan_secure`'s "
        "parameters over wrappers of the same clients; each request and reply rebuilt with "
        "`tiaki.secagg.wire`'s conversions and measured with `ByteSize()`: protobuf payloads "
        "only (no gRPC framing, HTTP/2 or TLS), the five rounds only (the pre-flight `GetInfo` "
        "and `Plan` are not counted). Every request carries the whole session (its roster "
        "included); per node, received = requests, sent = replies. The coordinator relays "
        "every byte a node sends or receives.",
        "Projection: per round, a least-squares line through the measured per-node bytes; "
        "time and CPU on power laws (see above). Not measured beyond "
        f"N = {rows[-1].nodes}.",
    ]
    lines = [
        f"# Secure sum against per-node answers: {counts} node processes × {clients:,} clients",
        "",
        machine + ".",
        "",
        *results_table(rows),
        "",
        *rounds_table(rows),
        "",
        *projection(rows),
        "",
        *(f"{i}. {note}" for i, note in enumerate(notes, start=1)),
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 5,20") from None
    if not counts or min(counts) < 3 or max(counts) > 200:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts must be 3..200")
    return counts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number, at least 1")
    return value


def _rho(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        value = Fraction(0)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: ρ must be a positive number")
    return value


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=_counts, default=[5, 20], help="e.g. 5,20,50")
    parser.add_argument("--clients", type=_positive, default=2000, help="clients per node")
    parser.add_argument("--runs", type=_positive, default=5, help="timed questions each way")
    parser.add_argument("--rho", type=_rho, default=Fraction(1, 10), help="ρ per question")
    args = parser.parse_args(argv)
    machine = environment()  # before the nodes load the machine
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    RESULTS.mkdir(exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="secure-run-", dir=RESULTS))
    try:
        rows = [measure_row(n, args.clients, args.runs, args.rho, parent) for n in args.nodes]
    except KeyboardInterrupt:
        print("interrupted; every node process was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    text = report(rows, args.rho, args.clients, machine)
    (RESULTS / "secure.md").write_text(text, encoding="utf-8")
    print()
    print(text, end="")
    print(f"(written to {(RESULTS / 'secure.md').relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
