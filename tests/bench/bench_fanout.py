"""Coordinator fan-out latency to 1, 10, 50 and 200 nodes on loopback.

Run with ``make bench`` or::

    .venv/bin/python -m tests.bench.bench_fanout [--nodes 1,10,50,200] [--runs N]
                                                   [--records N] [--servers-per-process N]

One question, a group-by count of records by ``region`` (16 cells) at ε = 0.1,
asked with :func:`coordinator.federated.ask_federation` (pre-flight ``Plan``,
which carries each node's budget, the mirror ledger's durable intent, concurrent
``Query`` fan-out, one durable mirror write per outcome, combination) with a
fresh query id per run.

Every node holds the same ``--records`` synthetic records (100,000): the
store ``workload.py`` caches under ``bench-results/cache/``; each node gets
its own directory whose ``data/`` hard-links that store and salt (copies if
links fail) beside a fresh ledger of its own. Node servers run in separate
processes, up to ``--servers-per-process`` of them per process (20 by
default: 200 processes of a few hundred MB each would not fit in memory), the
nodes dealt out in turn so that the first N nodes, which a row of N asks,
spread over as many processes as they can; plaintext on 127.0.0.1 (the
coordinator's ``insecure`` loopback mode). Each process prints its ports on stdout, answers CPU and
memory requests on stdin and stops its servers at EOF; every process is
stopped on exit, Ctrl-C, SIGTERM and errors included.

Also measured, to locate the time: one node's ``Query`` / ``Plan`` /
``GetBudget`` alone; end-to-end with the mirror stubbed out; a cold question
(a new ``Federation`` and mirror per question, as each ``tiaki query`` command
does); pre-flight, the ``Query`` fan-out, the mirror writes and the
combination each alone; and the CPU the coordinator process and the node
processes spend per call. The tables go to stdout and to
``bench-results/fanout.md``, the latencies also to ``fanout.json`` for
``report.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from coordinator.client import NodeClient, new_query_id
from coordinator.combine import combine_outcomes
from coordinator.config import FederationConfig
from coordinator.fanout import Federation, preflight
from coordinator.federated import ask_federation
from coordinator.mirror import MirrorLedger
from coordinator.results import FederatedAnswer, NodeOutcome
from node.config import load_config
from node.server import create_server
from node.service import NodeService, open_service
from node.store import SALT_FILE, STORE_FILE, load_dataset
from tests.bench import workload
from tiaki.budget import PrivacyDefinition
from tiaki.query import PrivacyCost, Query, QueryKind

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
NODE_LOG = RESULTS / "logs" / "fanout-nodes.log"
MODULE = "tests.bench.bench_fanout"  # node processes run this module with --serve
EPSILON = Fraction(1, 10)
RATIO_TARGET = 3.0  # median(N = max) / median(N = 1)
OVERHEAD_TARGET_MS = 2.0  # coordinator overhead per node
WARMUP = 3
IDLE_SECONDS = 2.0
SINGLE_RUNS = 3  # times --runs, for the one-node baseline the overhead is measured from
ANALYST = "bench"
IDENTITY = "bench"
POLICY: dict[str, Any] = {  # generous, so the bench never runs out of budget
    "privacy_definition": "pure",
    "budget": {"limit": 1_000_000, "period": "none", "lifetime_limit": None},
    "per_query_max": 10,
}
QUERY = Query(
    kind=QueryKind.COUNT,
    cost=PrivacyCost(PrivacyDefinition.PURE, EPSILON),
    group_by=("region",),
)
CELLS = 16


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Wall-time samples (ms) and CPU per call (ms) of one measured call."""

    samples_ms: tuple[float, ...]
    coordinator_cpu_ms: float = 0.0  # this process, every thread, per call
    nodes_cpu_ms: float = 0.0  # every node process, per call

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        if len(self.samples_ms) < 2:
            return self.samples_ms[0]
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[98]


def measure(
    call: Callable[[], object],
    runs: int,
    warmup: int,
    node_cpu: Callable[[], float] = lambda: 0.0,
) -> Timing:
    """Wall time of ``call`` over ``runs`` calls after ``warmup`` untimed ones, with CPU."""
    for _ in range(warmup):
        call()
    samples = []
    cpu0, nodes0 = time.process_time(), node_cpu()
    for _ in range(runs):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    cpu, nodes = time.process_time() - cpu0, node_cpu() - nodes0
    return Timing(tuple(samples), cpu * 1e3 / runs, nodes * 1e3 / runs)


# ---------------------------------------------------------------- the store


@dataclass(frozen=True)
class Store:
    node_dir: Path  # node.yaml + data/records.sqlite + data/node.salt
    facts: dict[str, Any]


def prepare_store(records: int) -> Store:
    """The cached CSV and imported store of about ``records`` records, built on first use."""
    cached = workload.prepare_records(workload.clients_for(records))
    return Store(cached.config_path.parent, cached.facts)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def prepare_nodes(store: Store, count: int, workdir: Path) -> list[Path]:
    """``count`` node directories sharing the store's records and salt, each its own ledger."""
    from tests.conftest import write_node_config

    configs = []
    for i in range(count):
        path = write_node_config(workdir / f"node{i:02d}", node_id=node_name(i), policy=POLICY)
        data = path.parent / "data"
        data.mkdir()
        for name in (STORE_FILE, SALT_FILE):
            _link_or_copy(store.node_dir / "data" / name, data / name)
        configs.append(path)
    return configs


def node_name(index: int) -> str:
    return f"ngo-{index:02d}"


# ---------------------------------------------------------------- node processes


def serve_nodes(config_paths: Sequence[Path]) -> None:
    """Child mode: serve each config on a loopback port; report memory and CPU on request.

    CPU is this process's ``time.process_time()`` (every thread, nanosecond
    clock), which /proc's tick-counted utime cannot match for calls of a few ms.
    EOF on stdin stops every server.
    """
    services: list[NodeService] = []
    running = []
    try:
        for path in config_paths:
            service = open_service(load_config(path))
            services.append(service)
            running.append(create_server(service, "127.0.0.1:0"))
        ports = [r.port for r in running]
        print(json.dumps({"ports": ports, "memory": workload.memory_mb()}), flush=True)
        for line in sys.stdin:  # "cpu" asks for the CPU clock, anything else memory; EOF stops
            if line.strip() == "cpu":
                print(time.process_time(), flush=True)
            else:
                print(json.dumps({"memory": workload.memory_mb()}), flush=True)
    finally:
        for node in running:
            node.stop(0)
        for service in services:
            service.ledger.close()


class NodeHost:
    """One process serving one or more nodes on loopback ports."""

    def __init__(self, config_paths: Sequence[Path], log: Path) -> None:
        with log.open("a", encoding="utf-8") as stderr:  # the nodes' own logging, kept aside
            self.proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, "--serve", *map(str, config_paths)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,  # Ctrl-C reaches only this process, which stops them
            )
        self.ports: list[int] = []
        self.hello: dict[str, Any] = {}

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"a node process exited with {self.proc.wait()}; see {NODE_LOG.relative_to(ROOT)}"
            )
        self.hello = json.loads(line)
        self.ports = [int(p) for p in self.hello["ports"]]

    def _ask(self, what: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a node process exited with {self.proc.wait()}")
        return line

    def memory(self) -> dict[str, float]:
        return dict(json.loads(self._ask("memory"))["memory"])

    def cpu_seconds(self) -> float:
        return float(self._ask("cpu"))

    def hang_up(self) -> None:
        """Close the child's stdin: it stops its servers and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):  # the child is already gone
                self.proc.stdin.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Hang up and wait for the child; kill it if it will not exit."""
        self.hang_up()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Cluster:
    """Every node host of the run; stopped together."""

    hosts: list[NodeHost] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    probe_s: float = 0.0  # what reading every host's CPU clock costs the hosts, per read
    _probes: int = 0

    def start(self, configs: Sequence[Path], per_process: int) -> None:
        """Deal the nodes out in turn: node i to process i mod P, so any first N spread out."""
        processes = math.ceil(len(configs) / per_process)
        NODE_LOG.parent.mkdir(parents=True, exist_ok=True)
        NODE_LOG.write_text("", encoding="utf-8")
        for p in range(processes):  # all start at once; then wait for each
            self.hosts.append(NodeHost(configs[p::processes], NODE_LOG))
        for host in self.hosts:
            host.wait_ready()
        self.addresses = [
            f"127.0.0.1:{self.hosts[i % processes].ports[i // processes]}"
            for i in range(len(configs))
        ]

    def cpu_seconds(self) -> float:
        """The node processes' CPU so far, less what asking for it has cost them."""
        total = sum(host.cpu_seconds() for host in self.hosts)
        self._probes += 1
        return total - self._probes * self.probe_s

    def calibrate(self, rounds: int = 20) -> None:
        """Measure ``probe_s``: the hosts' CPU between back-to-back reads, when idle."""
        self.probe_s = 0.0
        readings = [self.cpu_seconds() for _ in range(rounds + 1)]
        self.probe_s = statistics.median(b - a for a, b in itertools.pairwise(readings))

    def stop(self) -> None:
        for host in self.hosts:
            host.hang_up()  # all stop in parallel
        for host in self.hosts:
            host.stop()


# ---------------------------------------------------------------- measurements


E2E = "end-to-end (`ask_federation`)"
E2E_STUB = "end-to-end, mirror stubbed out"
E2E_COLD = "end-to-end, cold: new `Federation` + `MirrorLedger`"
PREFLIGHT = "pre-flight alone (`preflight`)"
FANOUT = "`Query` fan-out alone (`Federation.each`)"
MIRROR = "mirror writes alone (intent + N outcomes)"
COMBINE = "combination alone (`combine_outcomes`)"


@dataclass
class FanoutResult:
    nodes: int
    parts: dict[str, Timing]  # E2E first, then the ablations and components
    slowest_node_ms: float  # median over the e2e runs of the slowest node's Query time
    answer: FederatedAnswer

    @property
    def e2e(self) -> Timing:
        return self.parts[E2E]


class NullMirror:
    """Stands in for :class:`MirrorLedger` to show what the mirror adds: records nothing."""

    def record_intent(self, **_: object) -> None:
        pass

    def record_outcome(self, query_id: str, outcome: NodeOutcome) -> None:
        pass

    def record_outcomes(self, query_id: str, outcomes: Sequence[NodeOutcome]) -> None:
        pass


def federation_config(addresses: Sequence[str], ledger: Path) -> FederationConfig:
    """Plaintext loopback federation (the coordinator's ``insecure`` development mode)."""
    raw: dict[str, Any] = {
        "analyst": ANALYST,
        "identity": IDENTITY,
        "ledger": ledger,
        "nodes": [
            {"name": node_name(i), "address": address} for i, address in enumerate(addresses)
        ],
    }
    if "insecure" in FederationConfig.model_fields:  # absent before mutual TLS arrived
        raw["insecure"] = True
    return FederationConfig.model_validate(raw)


def check(answer: FederatedAnswer, nodes: int) -> None:
    bad = [o for o in answer.outcomes if not o.answered]
    if bad or len(answer.outcomes) != nodes or len(answer.cells) != CELLS:
        reasons = "; ".join(f"{o.node}: {o.status} {o.reason}" for o in bad[:3])
        raise RuntimeError(
            f"{nodes} nodes: {len(answer.outcomes)} outcomes, {len(answer.cells)} cells; {reasons}"
        )


def measure_fanout(cluster: Cluster, nodes: int, runs: int, workdir: Path) -> FanoutResult:
    config = federation_config(cluster.addresses[:nodes], workdir / f"mirror-{nodes}.sqlite")
    node_cpu = cluster.cpu_seconds
    answers: list[FederatedAnswer] = []
    parts: dict[str, Timing] = {}
    with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:

        def e2e(mirror: MirrorLedger = mirror) -> None:
            answer = ask_federation(federation, QUERY, analyst=ANALYST, mirror=mirror)
            check(answer, nodes)
            answers.append(answer)

        parts[E2E] = measure(e2e, runs, WARMUP, node_cpu)
        slowest = [max(o.seconds for o in a.outcomes) * 1e3 for a in answers[-runs:]]
        last = answers[-1]
        stub = cast(MirrorLedger, NullMirror())
        parts[E2E_STUB] = measure(lambda: e2e(stub), runs, WARMUP, node_cpu)

        def cold() -> None:
            with Federation(config) as federation, MirrorLedger(config.ledger) as mirror:
                check(ask_federation(federation, QUERY, analyst=ANALYST, mirror=mirror), nodes)

        parts[E2E_COLD] = measure(cold, runs, 1, node_cpu)
        parts[PREFLIGHT] = measure(lambda: preflight(federation, QUERY), runs, WARMUP, node_cpu)

        def fan_out() -> None:
            query_id = new_query_id()
            for _ in federation.each(
                lambda _, c: c.query(QUERY, query_id=query_id, analyst=ANALYST)
            ):
                pass

        parts[FANOUT] = measure(fan_out, runs, WARMUP, node_cpu)

    names = [o.node for o in last.outcomes]
    with MirrorLedger(workdir / f"mirror-only-{nodes}.sqlite") as alone:

        def mirror_writes() -> None:
            query_id = new_query_id()
            alone.record_intent(
                query_id=query_id,
                analyst=ANALYST,
                identity=IDENTITY,
                canonical_query=QUERY.canonical(),
                nodes=names,
                requested=QUERY.cost.amount,
                definition=QUERY.cost.definition,
            )
            for outcome in last.outcomes:
                alone.record_outcome(query_id, outcome)

        parts[MIRROR] = measure(mirror_writes, runs, WARMUP, node_cpu)
    parts[COMBINE] = measure(
        lambda: combine_outcomes(QUERY, last.outcomes, None), runs, WARMUP, node_cpu
    )
    return FanoutResult(nodes, parts, statistics.median(slowest), last)


def measure_single(address: str, runs: int, node_cpu: Callable[[], float]) -> dict[str, Timing]:
    """One node's RPCs alone, over one warm channel: the node side of a question."""
    with NodeClient(address, identity=IDENTITY) as client:
        return {
            "Query": measure(
                lambda: client.query(QUERY, query_id=new_query_id(), analyst=ANALYST),
                runs,
                WARMUP,
                node_cpu,
            ),
            "Plan": measure(lambda: client.plan(QUERY), runs, WARMUP, node_cpu),
            "GetBudget": measure(client.budget, runs, WARMUP, node_cpu),
        }


# ---------------------------------------------------------------- report


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def overhead_per_node(result: FanoutResult, single_query_ms: float) -> float:
    return (result.e2e.median - single_query_ms) / result.nodes


def latency_table(
    results: Sequence[FanoutResult], single_query_ms: float, layout: Callable[[int], str]
) -> Iterator[str]:
    base = results[0].e2e.median if results and results[0].nodes == 1 else None
    yield _row(
        [
            "nodes",
            "processes",
            "runs",
            "median ms",
            "p99 ms",
            "min ms",
            "max ms",
            "× 1 node",
            f"< {RATIO_TARGET:g}×",
            "overhead / node ms",
            f"< {OVERHEAD_TARGET_MS:g} ms",
            "coordinator CPU / node ms",
        ]
    )
    yield _row(["---:", "---", "---:", *["---:"] * 5, "---", "---:", "---", "---:"])
    for r in results:
        ratio = r.e2e.median / base if base else math.nan
        overhead = overhead_per_node(r, single_query_ms)
        yield _row(
            [
                str(r.nodes),
                layout(r.nodes),
                str(len(r.e2e.samples_ms)),
                f"{r.e2e.median:.1f}",
                f"{r.e2e.p99:.1f}",
                f"{min(r.e2e.samples_ms):.1f}",
                f"{max(r.e2e.samples_ms):.1f}",
                f"{ratio:.2f}",
                "-" if r.nodes == 1 or not base else _verdict(ratio < RATIO_TARGET),
                f"{overhead:.2f}",
                _verdict(overhead < OVERHEAD_TARGET_MS),
                f"{r.e2e.coordinator_cpu_ms / r.nodes:.2f}",
            ]
        )


def breakdown_table(results: Sequence[FanoutResult], cores: int) -> Iterator[str]:
    """One row per measured call; per node count: wall median / coordinator CPU / nodes' CPU."""
    yield _row(
        ["median ms: wall / coordinator CPU / nodes' CPU", *(f"{r.nodes} nodes" for r in results)]
    )
    yield _row(["---", *["---:"] * len(results)])
    for part in results[0].parts:
        cells = []
        for r in results:
            t = r.parts[part]
            cells.append(f"{t.median:.1f} / {t.coordinator_cpu_ms:.1f} / {t.nodes_cpu_ms:.1f}")
        yield _row([part, *cells])
    yield _row(
        [
            "slowest node's `Query` within end-to-end (wall)",
            *(f"{r.slowest_node_ms:.1f}" for r in results),
        ]
    )
    yield _row(
        [
            f"CPU floor of end-to-end: (coordinator + nodes' CPU) / {cores} cores",
            *(f"{(r.e2e.coordinator_cpu_ms + r.e2e.nodes_cpu_ms) / cores:.1f}" for r in results),
        ]
    )


def single_table(single: dict[str, Timing]) -> Iterator[str]:
    yield _row(["one node, one RPC", "median ms", "min ms", "coordinator CPU ms", "node CPU ms"])
    yield _row(["---", "---:", "---:", "---:", "---:"])
    methods = {"Query": "query", "Plan": "plan", "GetBudget": "budget"}
    for name, timing in single.items():
        yield _row(
            [
                f"`NodeClient.{methods[name]}` ({name})",
                f"{timing.median:.2f}",
                f"{min(timing.samples_ms):.2f}",
                f"{timing.coordinator_cpu_ms:.2f}",
                f"{timing.nodes_cpu_ms:.2f}",
            ]
        )


def environment() -> str:
    versions = ", ".join(f"{name} {_version(name)}" for name in ("numpy", "opendp", "grpcio"))
    return (
        f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs "
        f"({platform.machine()}); {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace) -> str:
    counts = sorted(set(args.nodes))
    most = counts[-1]
    per_process = args.servers_per_process
    RESULTS.mkdir(exist_ok=True)
    store = prepare_store(args.records)
    facts = store.facts
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="fanout-run-", dir=store.node_dir.parent))
    cluster = Cluster()
    try:
        configs = prepare_nodes(store, most, workdir)
        processes = math.ceil(most / per_process)
        print(
            f"{facts['csv_rows']:,} records of {facts['clients']:,} clients per node; "
            f"starting {most} nodes in {processes} process{'es' if processes > 1 else ''} ...",
            flush=True,
        )
        start = time.perf_counter()
        cluster.start(configs, per_process)
        startup_s = time.perf_counter() - start
        bounded = load_dataset(load_config(configs[0])).n_records
        memory = [host.memory() for host in cluster.hosts]
        rss_total = sum(m["VmRSS"] for m in memory)
        print(f"started in {startup_s:.1f} s; nodes' RSS {rss_total / 1024:.1f} GB", flush=True)

        cluster.calibrate()
        idle0 = cluster.cpu_seconds()
        time.sleep(IDLE_SECONDS)
        idle_ms = (cluster.cpu_seconds() - idle0) * 1e3 / IDLE_SECONDS

        print("one node alone ...", flush=True)
        single = measure_single(cluster.addresses[0], SINGLE_RUNS * args.runs, cluster.cpu_seconds)
        single_query_ms = single["Query"].median

        results = []
        for count in counts:
            print(f"{count} nodes ...", flush=True)
            results.append(measure_fanout(cluster, count, args.runs, workdir))
            r = results[-1]
            print(
                f"  end-to-end median {r.e2e.median:.1f} ms, p99 {r.e2e.p99:.1f} ms",
                flush=True,
            )
        cluster_probe_ms = cluster.probe_s * 1e3
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    def layout(nodes: int) -> str:
        used = min(nodes, processes)
        return str(used) if nodes <= processes else f"{used} (≤ {math.ceil(nodes / used)} each)"

    total = sum(cell.estimate for cell in results[-1].answer.cells)
    notes = [
        "Question: count of records by `region` (16 cells), ε = 0.1 (pure DP), a fresh "
        "query id per run, through `ask_federation` on one warm `Federation` and mirror: "
        "pre-flight (one `Plan` per node, carrying its budget), the mirror's durable intent, the "
        "concurrent `Query` fan-out, one durable mirror write per outcome, combination. "
        f"{WARMUP} warm-up questions per row; p99 of {args.runs} runs is interpolated "
        "(at 20 runs it is close to the maximum).",
        f"Nodes: each holds the same {facts['csv_rows']:,} synthetic records "
        f"({facts['clients']:,} clients, {bounded:,} after bounding to k = 4; a hard link of "
        "one imported store and salt) and its own fresh ledger (WAL, synchronous=FULL). "
        f"{most} node servers in {processes} processes "
        f"(at most {per_process} per process, node i in process i mod {processes}, "
        f"`node.service.open_service` + `node.server.create_server` on 127.0.0.1:0), "
        f"started concurrently in {startup_s:.1f} s; their RSS together "
        f"{rss_total / 1024:.1f} GB; idle, they use {idle_ms:.1f} ms CPU per second "
        "together. Rows with fewer nodes ask the first N; the rest stay up, idle.",
        "Overhead / node = (median end-to-end(N) − median of one node's `Query` RPC alone "
        f"({single_query_ms:.2f} ms over {SINGLE_RUNS * args.runs} runs)) / N: everything a "
        "question costs beyond one node's answer, spread over its nodes. It is wall time, so "
        "on this machine it includes the other nodes' CPU work queueing for the same cores. "
        "Coordinator CPU / node = CPU time of the coordinator process (all its threads, "
        "gRPC's included) per question / N.",
        "Breakdown: each call measured alone for the same runs on the same node processes, "
        "in this order: end-to-end as above; end-to-end with a mirror that records nothing "
        "(what the mirror adds in place); end-to-end cold, with a new `Federation` (new "
        "channels and thread pool) and `MirrorLedger` per question, as each `tiaki query` "
        "command makes (process start and imports not included); `coordinator.fanout."
        "preflight` alone; `Query` to every node through `Federation.each` alone (no "
        "pre-flight, no mirror); `record_intent` + N × `record_outcome` alone on a separate "
        "mirror file (no network; its wall time beyond its CPU is fsync); `combine_outcomes` "
        "on the last answer's outcomes. Each cell: median "
        "wall ms / coordinator-process CPU ms per call / node processes' CPU ms per call "
        "(`time.process_time()` in each, read before and after the runs; the cost of the "
        f"read itself, {cluster_probe_ms:.2f} ms, is subtracted). The slowest node's `Query` "
        "is the largest `NodeOutcome.seconds` of each end-to-end question (from submission "
        "to reply, queueing included). CPU floor: no schedule of that CPU on this machine "
        "finishes sooner.",
        f"Sanity: the last {results[-1].nodes}-node answer totals {total:,.0f} records over "
        f"{len(results[-1].answer.cells)} cells ({results[-1].nodes} × {bounded:,} = "
        f"{results[-1].nodes * bounded:,} before noise).",
    ]
    summary = {
        "environment": environment(),
        "records_per_node": facts["csv_rows"],
        "processes": processes,
        "servers_per_process": per_process,
        "nodes_rss_gb": rss_total / 1024,  # memory_mb() gives MB
        "cores": cores,
        "single_query_ms": single_query_ms,
        "rows": [
            {
                "nodes": r.nodes,
                "processes": layout(r.nodes),
                "samples_ms": list(r.e2e.samples_ms),
                "median_ms": r.e2e.median,
                "p99_ms": r.e2e.p99,
                "coordinator_cpu_ms": r.e2e.coordinator_cpu_ms,
                "nodes_cpu_ms": r.e2e.nodes_cpu_ms,
                "slowest_node_ms": r.slowest_node_ms,
            }
            for r in results
        ],
    }
    (RESULTS / "fanout.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    lines = [
        f"# Fan-out benchmark: {', '.join(map(str, counts))} nodes × {facts['csv_rows']:,} records",
        "",
        environment() + ".",
        "",
        *latency_table(results, single_query_ms, layout),
        "",
        *breakdown_table(results, cores),
        "",
        *single_table(single),
        "",
        *(f"{i}. {note}" for i, note in enumerate(notes, start=1)),
    ]
    return "\n".join(lines) + "\n"


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1,10,50") from None
    if not counts or min(counts) < 1 or max(counts) > 500:
        raise argparse.ArgumentTypeError(f"{text!r}: node counts must be 1..500")
    return counts


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the nodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=_counts, default=[1, 10, 50, 200], help="e.g. 1,10,50")
    parser.add_argument("--runs", type=_positive, default=20, help="timed questions per row")
    parser.add_argument("--records", type=_positive, default=100_000, help="records per node")
    parser.add_argument(
        "--servers-per-process", type=_positive, default=20, help="most node servers per process"
    )
    parser.add_argument("--serve", type=Path, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve_nodes(args.serve)
        return 0
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # for tests.conftest
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted; every node process was stopped", file=sys.stderr)
        return 130
    (RESULTS / "fanout.md").write_text(report, encoding="utf-8")
    print()
    print(report, end="")
    print(f"(written to {(RESULTS / 'fanout.md').relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
