"""Sustained concurrent load on one node: a second process, mutual TLS, loopback.

Run with ``make bench`` or::

    .venv/bin/python tests/bench/bench_load.py [--seconds 60] [--clients 20]
                                                 [--records 1000000] [--seed 2]
                                                 [--server-threads N]

The node holds about ``--records`` synthetic records: the store ``bench_node.py``
caches under ``bench-results/cache/`` (built on first use), hard-linked into a
fresh data directory beside a fresh ledger. It runs as ``tiaki-node serve`` in
its own process, serving mutual TLS as in production with certificates from a
throwaway federation CA, ``max_concurrent_per_identity`` and (unless
``--server-threads`` says otherwise) ``server.max_workers`` of ``--clients`` but
at least 32, and a budget that never runs out (period none, ``per_query_max``
10). Before it starts, each question is timed alone in this process, one thread.

The load comes from a second process (this file with ``--worker``):
``--clients`` threads, each with its own channel (its own TLS connection) and
coordinator ``coordinator-a``'s certificate, asking back to back (closed loop,
no think time) for ``--seconds`` after one warm-up round of each question,
cycling over four questions at ε = 0.01 with a fresh query id each.

Reported: requests, errors by status, queries per second, latency percentiles
per question and overall, per time window, the node's RSS, threads, open files
and CPU (from /proc every second), and the ledger read after the node stopped:
one entry per answered request, the same query ids, the spending adding up. The
tables go to stdout and to ``bench-results/load.md``; the exit status is 1 if a
check fails. Every process is stopped on exit, Ctrl-C, SIGTERM and errors
included.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from coordinator.client import NodeClient, new_query_id
from node import answering, engine
from node.config import load_config
from node.ledger import PrivacyLedger
from node.store import SALT_FILE, STORE_FILE, load_dataset
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition, display_amount, format_amount, read_amount
from tiaki.certs import tls_files
from tiaki.errors import TiakiError
from tiaki.query import Bounds, InSet, PrivacyCost, Query, QueryKind
from tiaki.wire_errors import status_code_of

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
BIN = Path(sys.executable).parent
NODE_ID = "ngo-load"
COORDINATOR = "coordinator-a"  # one of tests.conftest.ALLOWED_COORDINATORS
ANALYST = "bench-load"
EPSILON = Fraction(1, 100)
K = 4  # records per client, as bench_node.py
CLIENTS_PER_RECORD = Fraction(33, 100)  # seed 2: 330,000 clients -> 1,008,243 records
MIN_SERVER_SLOTS = 32  # server.max_workers and max_concurrent_per_identity, at least
POLICY: dict[str, Any] = {  # generous, so the bench never runs out of budget
    "privacy_definition": "pure",
    "budget": {"limit": 1_000_000, "period": "none", "lifetime_limit": None},
    "per_query_max": 10,
    "max_records_per_client": K,
}
OK = "OK"
BAD_ANSWER = "BAD_ANSWER"  # the node answered, but not what was asked (charged all the same)
ANSWERED = (OK, BAD_ANSWER)
CALL_TIMEOUT_S = 30.0
SETUP_TIMEOUT_S = 120.0  # node start-up, connections and warm-up, each
PROGRESS_EVERY_S = 10.0
SAMPLE_EVERY_S = 1.0
WINDOWS = 6  # rows of the over-time table
# Bounded: no new high of RSS in the second half of the load beyond this share of the
# first half's (which includes the ramp as the allocator grows to the working set).
RSS_NEW_HIGH_TOLERANCE = 0.10
ENGINE_RUNS = 20  # in-process timings of each question, for comparison
PR_SET_PDEATHSIG = 1  # linux/prctl.h

_COST = PrivacyCost(PrivacyDefinition.PURE, EPSILON)
HISTOGRAM_EDGES = (0.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)


@dataclass(frozen=True)
class Question:
    name: str
    query: Query
    cells: int  # what a right answer has


QUESTIONS = (
    Question("count by region", Query(QueryKind.COUNT, _COST, group_by=("region",)), 16),
    Question(
        "mean sessions, service = budgeting",
        Query(
            QueryKind.MEAN,
            _COST,
            column="sessions",
            bounds=Bounds(0, 60),
            filters=(InSet("service", ("budgeting",)),),
        ),
        1,
    ),
    Question(
        "count_clients by service",
        Query(QueryKind.COUNT_CLIENTS, _COST, group_by=("service",)),
        5,
    ),
    Question(
        "histogram of sessions",
        Query(QueryKind.HISTOGRAM, _COST, column="sessions", bin_edges=HISTOGRAM_EDGES),
        len(HISTOGRAM_EDGES) - 1,
    ),
)


def _die_with_parent(parent: int | None) -> None:
    """Linux: SIGTERM this process when ``parent`` dies, even by SIGKILL (no orphans)."""
    if parent is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        os._exit(1)


# The node is `tiaki-node serve` itself; this stub only arms the same parent-death
# signal and then becomes it (exec keeps the pid, which /proc sampling relies on).
_EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


# ---------------------------------------------------------------- the load generator


@dataclass(frozen=True)
class Reply:
    status: str  # OK, BAD_ANSWER, a gRPC status name or an exception's class name
    latency_ms: float
    query_id: str
    charged: str  # exact, as the answer says; "" unless answered
    detail: str  # what went wrong, if anything


# One timed request: question index, start (s after the load began), latency ms, status,
# then, if answered, its query id and the charge the answer reports.
Sample = tuple[int, float, float, str, str, str]
Warmup = tuple[int, str, str, str]  # question index, status, query id, charge


def ask(client: NodeClient, question: Question) -> Reply:
    """One query with a fresh id; errors become a status, never an exception."""
    query_id = new_query_id()
    charged = ""
    start = time.perf_counter_ns()
    try:
        answer = client.query(question.query, query_id=query_id, analyst=ANALYST)
    except TiakiError as exc:
        status, detail = status_code_of(exc).name, exc.message
    except Exception as exc:  # counted as an error; the run goes on
        status, detail = type(exc).__name__, str(exc)
    else:
        latency_ms = (time.perf_counter_ns() - start) / 1e6
        status, detail = _check_answer(answer, question, query_id)
        charged = format_amount(answer.charged.amount)
        return Reply(status, latency_ms, query_id, charged, detail)
    latency_ms = (time.perf_counter_ns() - start) / 1e6
    return Reply(status, latency_ms, "", charged, detail)


def _check_answer(answer: Answer, question: Question, query_id: str) -> tuple[str, str]:
    problems = []
    if len(answer.cells) != question.cells:
        problems.append(f"{len(answer.cells)} cells, expected {question.cells}")
    if answer.replayed or answer.query_id != query_id:
        problems.append(f"replayed={answer.replayed}, query id {answer.query_id!r}")
    if not 0 < answer.charged.amount <= EPSILON:
        problems.append(f"charged {answer.charged}")
    return (BAD_ANSWER, "; ".join(problems)) if problems else (OK, "")


@dataclass
class ClientThread:
    """One simulated coordinator: its own channel, its own results."""

    index: int
    samples: list[Sample]
    warmup: list[Warmup]
    errors: Counter[str]
    details: dict[str, str]  # first message per error status
    failure: str = ""


def run_worker(args: argparse.Namespace) -> int:
    """Worker mode: ``--clients`` threads asking the node for ``--seconds``; JSON to ``--out``."""
    _die_with_parent(args.parent)
    files = tls_files(args.cert, args.key, args.ca)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.root_certificates,
        private_key=files.private_key,
        certificate_chain=files.cert_chain,
    )
    threads = [ClientThread(i, [], [], Counter(), {}) for i in range(args.clients)]
    clock: dict[str, float] = {}

    def begin() -> None:  # run by the last thread through the barrier, before any is released
        clock["cpu"] = time.process_time()
        clock["start"] = time.monotonic()
        clock["deadline"] = clock["start"] + args.seconds

    barrier = threading.Barrier(args.clients, action=begin, timeout=SETUP_TIMEOUT_S)

    def record(state: ClientThread, reply: Reply) -> None:
        if reply.status != OK:
            state.errors[reply.status] += 1
            state.details.setdefault(reply.status, reply.detail[:300])

    def loop(state: ClientThread) -> None:
        try:
            with NodeClient(
                args.address,
                identity=COORDINATOR,
                timeout=CALL_TIMEOUT_S,
                credentials=credentials,
                server_name=args.server_name,
            ) as client:
                client.info()  # connect and handshake before anything is timed
                for q, question in enumerate(QUESTIONS):  # warm-up: charged, not timed
                    reply = ask(client, question)
                    state.warmup.append((q, reply.status, reply.query_id, reply.charged))
                    record(state, reply)
                barrier.wait()
                start, deadline = clock["start"], clock["deadline"]
                turn = state.index  # stagger the mix across threads
                while (now := time.monotonic()) < deadline:
                    q = turn % len(QUESTIONS)
                    turn += 1
                    reply = ask(client, QUESTIONS[q])
                    sample = (q, now - start, reply.latency_ms, reply.status)
                    state.samples.append((*sample, reply.query_id, reply.charged))
                    record(state, reply)
        except threading.BrokenBarrierError:
            state.failure = state.failure or "another client failed to start"
        except Exception as exc:
            state.failure = f"{type(exc).__name__}: {exc}"
            barrier.abort()

    workers = [
        threading.Thread(target=loop, args=(state,), name=f"client-{state.index}", daemon=True)
        for state in threads
    ]
    for thread in workers:
        thread.start()
    _report_progress(threads, workers, clock, args.seconds)
    for thread in workers:
        thread.join()
    end = time.monotonic()
    failures = [f"client {s.index}: {s.failure}" for s in threads if s.failure]
    details: dict[str, str] = {}
    for state in threads:
        for status, detail in state.details.items():
            details.setdefault(status, detail)
    result = {
        "start": clock.get("start", end),
        "end": end,
        "cpu_s": time.process_time() - clock.get("cpu", 0.0),
        "failures": failures,
        "details": details,
        "warmup": [w for s in threads for w in s.warmup],
        "samples": [sample for s in threads for sample in s.samples],
    }
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 1 if failures else 0


def _report_progress(
    threads: Sequence[ClientThread],
    workers: Sequence[threading.Thread],
    clock: dict[str, float],
    seconds: float,
) -> None:
    """Print requests and errors so far every PROGRESS_EVERY_S while the load runs."""
    next_report = PROGRESS_EVERY_S
    while any(t.is_alive() for t in workers):
        time.sleep(0.2)
        if "start" not in clock:
            continue
        elapsed = time.monotonic() - clock["start"]
        if elapsed >= next_report and elapsed < seconds:
            done = sum(len(s.samples) for s in threads)
            errors = sum(sum(s.errors.values()) for s in threads)
            print(
                f"  {elapsed:3.0f} s: {done:,} requests ({done / elapsed:,.0f}/s), {errors} errors",
                flush=True,
            )
            next_report += PROGRESS_EVERY_S


# ---------------------------------------------------------------- processes


class Child:
    """A process this run started; stopped by its pid, politely first."""

    def __init__(self, name: str, argv: Sequence[str], **popen: Any) -> None:
        self.name = name
        # A session of its own: Ctrl-C reaches only this process, which stops the child.
        self.proc = subprocess.Popen(list(argv), start_new_session=True, **popen)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop in {timeout:.0f} s; killing it", file=sys.stderr)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass(frozen=True)
class NodeStarted:
    child: Child
    port: int
    records: int  # after bounding to K per client
    clients: int


SERVING = re.compile(r"serving on \S+:(\d+) \((\d+) records, (\d+) clients")


def start_node(config_path: Path, log_path: Path) -> NodeStarted:
    """``tiaki-node serve`` in its own process; waits for its "serving on" line."""
    argv = [sys.executable, "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid())]
    argv += [str(BIN / "tiaki-node"), "serve", "--config", str(config_path)]
    with log_path.open("wb") as log:
        child = Child("the node", argv, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(encoding="utf-8", errors="replace")
        if match := SERVING.search(text):
            port, records, clients = map(int, match.groups())
            return NodeStarted(child, port, records, clients)
        if child.proc.poll() is not None:
            raise RuntimeError(f"the node exited with {child.proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    child.stop(10)
    raise RuntimeError(f"the node did not start within {SETUP_TIMEOUT_S:.0f} s")


@dataclass(frozen=True)
class ProcSample:
    t: float  # time.monotonic(), the same clock in every process on Linux
    rss_mb: float
    hwm_mb: float
    threads: int
    fds: int
    cpu_s: float  # user + system so far
    sys_s: float  # system alone (page faults, syscalls)


_TICKS = os.sysconf("SC_CLK_TCK")


def read_proc(pid: int) -> ProcSample | None:
    """RSS, peak RSS, threads, open files and CPU of ``pid`` from /proc; None once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    after_name = stat.rpartition(")")[2].split()  # utime and stime: fields 14 and 15
    return ProcSample(
        t=time.monotonic(),
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        hwm_mb=int(fields["VmHWM"].split()[0]) / 1024,
        threads=int(fields["Threads"]),
        fds=fds,
        cpu_s=(int(after_name[11]) + int(after_name[12])) / _TICKS,
        sys_s=int(after_name[12]) / _TICKS,
    )


class Sampler:
    """Samples a process every SAMPLE_EVERY_S in a thread of this process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[ProcSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            sample = read_proc(self.pid)
            if sample is not None:
                self.samples.append(sample)
            if self._stop.wait(SAMPLE_EVERY_S):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while stopping the children, so stopping finishes."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the store


def clients_for(records: int) -> int:
    """Clients for about ``records`` records; 1,000,000 gives bench_node.py's own cache."""
    return max(1, round(records * CLIENTS_PER_RECORD))


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """The cached store, linked into a fresh node directory serving mutual TLS."""
    from tests.bench import bench_node  # its cache, so both benchmarks share one store
    from tests.conftest import FederationPki, write_node_config

    cached = bench_node.prepare_node(clients_for(args.records), args.seed)
    source = load_config(cached.config_path).data_dir
    pki = FederationPki(workdir / "pki")
    slots = max(MIN_SERVER_SLOTS, args.clients)
    threads = args.server_threads or slots
    config_path = write_node_config(
        workdir / "node",
        node_id=NODE_ID,
        pki=pki,
        server={"max_workers": threads, "max_concurrent_per_identity": slots},
        policy=POLICY,
    )
    data = load_config(config_path).data_dir
    data.mkdir(mode=0o700, parents=True)
    for name in (STORE_FILE, SALT_FILE):
        try:
            os.link(source / name, data / name)
        except OSError:
            shutil.copy2(source / name, data / name)
    cert, key = pki.coordinator(COORDINATOR)
    facts = dict(cached.facts)
    facts |= {"slots": slots, "threads": threads, "ca": pki.ca_cert, "cert": cert, "key": key}
    return config_path, facts


def engine_alone(config_path: Path) -> dict[str, float]:
    """Median ms of plan + evaluate + release per question: one thread, in this process."""
    config = load_config(config_path)
    dataset = load_dataset(config)
    medians = {}
    for question in QUESTIONS:

        def call(query: Query = question.query) -> object:
            plan = engine.plan(query, config.schema, config.policy)
            aggregates = engine.evaluate(plan, dataset, config.schema)
            return answering.release_cells(plan, aggregates, config.policy.privacy_definition)

        call()
        samples = []
        for _ in range(ENGINE_RUNS):
            begin = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - begin) / 1e6)
        medians[question.name] = statistics.median(samples)
    return medians


# ---------------------------------------------------------------- the run


@dataclass
class Outcome:
    """What the run measured, for the report."""

    args: argparse.Namespace
    facts: dict[str, Any]
    node: NodeStarted
    worker: dict[str, Any]
    proc: list[ProcSample]
    node_exit: int
    node_log_problems: list[str]
    ledger: dict[str, Any]
    engine_ms: dict[str, float]


def run(args: argparse.Namespace) -> Outcome:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="load-run-", dir=RESULTS / "cache"))
    children: list[Child] = []
    sampler: Sampler | None = None
    try:
        loadavg = os.getloadavg()[0]
        config_path, facts = prepare(args, workdir)
        facts["loadavg"] = loadavg
        print(
            f"{facts['csv_rows']:,} records of {facts['clients']:,} clients; timing each "
            "question alone ...",
            flush=True,
        )
        engine_ms = engine_alone(config_path)
        print("starting the node (mutual TLS) ...", flush=True)
        node = start_node(config_path, workdir / "node.log")
        children.append(node.child)
        sampler = Sampler(node.child.pid)
        sampler.start()
        print(
            f"node serving on 127.0.0.1:{node.port} (pid {node.child.pid}); "
            f"{args.clients} clients for {args.seconds:g} s from a second process ...",
            flush=True,
        )
        out = workdir / "worker.json"
        worker_argv = [sys.executable, __file__, "--worker", "--out", str(out)]
        worker_argv += ["--address", f"127.0.0.1:{node.port}", "--server-name", NODE_ID]
        worker_argv += ["--ca", str(facts["ca"]), "--cert", str(facts["cert"])]
        worker_argv += ["--key", str(facts["key"]), "--parent", str(os.getpid())]
        worker_argv += ["--clients", str(args.clients), "--seconds", str(args.seconds)]
        worker = Child("the load generator", worker_argv)
        children.append(worker)
        try:
            worker_exit = worker.proc.wait(timeout=args.seconds + 2 * SETUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the load generator did not finish in time") from None
        if not out.exists():
            raise RuntimeError(f"the load generator exited with {worker_exit} and no results")
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        if result["failures"]:
            raise RuntimeError("the load generator failed: " + "; ".join(result["failures"][:3]))
        time.sleep(SAMPLE_EVERY_S)  # one more sample of the node after the load
        sampler.stop()
        with signals_held():
            node_exit = node.child.stop(timeout=30)
        ledger = read_ledger(config_path)
        log = (workdir / "node.log").read_text(encoding="utf-8", errors="replace")
        problems = [
            line.strip()
            for line in log.splitlines()
            if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
        ]
        if node_exit != 0 or problems:
            print(f"the node exited with {node_exit}; its log:\n{log[-3000:]}", file=sys.stderr)
        return Outcome(
            args, facts, node, result, sampler.samples, node_exit, problems, ledger, engine_ms
        )
    finally:
        with signals_held():
            if sampler is not None:
                sampler.stop()
            for child in reversed(children):  # the load first, then the node
                child.stop(timeout=30)
            shutil.rmtree(workdir, ignore_errors=True)


def read_ledger(config_path: Path) -> dict[str, Any]:
    """The stopped node's ledger: its entries, checked totals, size on disk."""
    config = load_config(config_path)
    path = config.data_dir / "ledger.sqlite"
    with PrivacyLedger.open(path, config.policy) as ledger:
        ledger.verify()  # raises if the period totals do not match the entries
        entries = ledger.entries()
        spent = ledger.status().lifetime_spent
    size = sum(p.stat().st_size for p in path.parent.glob("ledger.sqlite*"))
    return {
        "ids": [e.query_id for e in entries],
        "identities": sorted({e.identity for e in entries}),
        "kinds": Counter(e.kind for e in entries),
        "spent": spent,
        "bytes": size,
    }


# ---------------------------------------------------------------- report


@dataclass(frozen=True)
class Latency:
    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float


def latency(values: npt.NDArray[np.float64]) -> Latency | None:
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return Latency(values.size, float(values.mean()), p50, p95, p99, float(values.max()))


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**NO**"


@dataclass(frozen=True)
class Load:
    """The measured requests as arrays."""

    question: npt.NDArray[np.int64]
    start: npt.NDArray[np.float64]  # s after the load began
    latency_ms: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]
    statuses: list[str]
    elapsed_s: float  # from the start to the last reply

    @classmethod
    def of(cls, worker: dict[str, Any]) -> Load:
        samples = worker["samples"]
        return cls(
            question=np.array([s[0] for s in samples], dtype=np.int64),
            start=np.array([s[1] for s in samples], dtype=np.float64),
            latency_ms=np.array([s[2] for s in samples], dtype=np.float64),
            ok=np.array([s[3] == OK for s in samples], dtype=np.bool_),
            statuses=[s[3] for s in samples],
            elapsed_s=float(worker["end"] - worker["start"]),
        )

    @property
    def done(self) -> npt.NDArray[np.float64]:
        return self.start + self.latency_ms / 1e3


def question_table(load: Load, engine_ms: dict[str, float]) -> Iterator[str]:
    yield _row(
        ["question", "requests", "errors", "QPS", "mean ms", "p50 ms", "p95 ms", "p99 ms",
         "max ms", "alone ms"]
    )  # fmt: skip
    yield _row(["---", *["---:"] * 9])
    rows = [(q.name, load.question == i) for i, q in enumerate(QUESTIONS)]
    rows.append(("**all**", np.ones_like(load.ok)))
    for name, mask in rows:
        stats = latency(load.latency_ms[mask])
        errors = int((mask & ~load.ok).sum())
        alone = engine_ms.get(name, statistics.fmean(engine_ms.values()))
        if stats is None:
            yield _row([name, "0", "0", *["-"] * 6, _ms(alone)])
            continue
        yield _row(
            [
                name,
                f"{stats.n:,}",
                str(errors) if not errors else f"**{errors}**",
                f"{int((mask & load.ok).sum()) / load.elapsed_s:,.1f}",
                *(_ms(v) for v in (stats.mean, stats.p50, stats.p95, stats.p99, stats.max)),
                _ms(alone),
            ]
        )


def error_table(worker: dict[str, Any], load: Load) -> Iterator[str]:
    counts = Counter(s for s in load.statuses if s != OK)
    counts.update(w[1] for w in worker["warmup"] if w[1] != OK)
    yield _row(["status", "requests", "first message"])
    yield _row(["---", "---:", "---"])
    if not counts:
        yield _row(["(none: every request answered)", "0", "-"])
    for status, count in counts.most_common():
        message = worker["details"].get(status, "").replace("|", "/")
        yield _row([status, f"{count:,}", message[:200]])


def at(proc: Sequence[ProcSample], t: float) -> ProcSample:
    """The last sample taken by ``t`` (the first sample if none was)."""
    return ([p for p in proc if p.t <= t] or list(proc[:1]))[-1]


def window_table(
    load: Load, proc: Sequence[ProcSample], start: float, seconds: float
) -> Iterator[str]:
    """Throughput, latency, node RSS and CPU over consecutive windows of the load.

    Requests fall in the window of their reply; the last window also takes the
    replies that came after the deadline.
    """
    width = max(1.0, round(seconds / WINDOWS))
    count = max(1, int(seconds // width))
    yield _row(
        ["window s", "answered", "QPS", "p50 ms", "p99 ms", "max ms", "node RSS MB (end)",
         "node CPU cores"]
    )  # fmt: skip
    yield _row(["---", *["---:"] * 7])
    done = load.done
    for w in range(count):
        lo = w * width
        last = w == count - 1
        hi = max(load.elapsed_s, lo + width) if last else lo + width
        mask = (done >= lo) & ((done <= hi) if last else (done < hi))
        stats = latency(load.latency_ms[mask])
        answered = int((mask & load.ok).sum())
        first, end = at(proc, start + lo), at(proc, start + hi)
        cpu = "-"
        if end.t > first.t:
            cpu = f"{(end.cpu_s - first.cpu_s) / (end.t - first.t):.2f}"
        cells = ["-"] * 3 if stats is None else [_ms(stats.p50), _ms(stats.p99), _ms(stats.max)]
        yield _row(
            [
                f"{lo:.0f}-{hi:.0f}",
                f"{answered:,}",
                f"{answered / (hi - lo):,.1f}",
                *cells,
                f"{end.rss_mb:.0f}",
                cpu,
            ]
        )


@dataclass(frozen=True)
class Memory:
    idle: ProcSample  # first sample: records loaded, before any query
    start: ProcSample  # when the timed load began (after the warm-up)
    end: ProcSample  # last sample during the load
    after: ProcSample  # last sample, after the load
    first: ProcSample  # the most of each measure from node start to half-way through the load
    second: ProcSample  # the most of each measure over the second half of the load
    cpu_cores: float  # node CPU during the load / wall time
    sys_cores: float  # the system part of it
    cpu_ms_per_answer: float  # node CPU during the load / requests answered meanwhile


def _most(samples: Sequence[ProcSample]) -> ProcSample:
    """The largest RSS, peak RSS, threads, files and CPU among ``samples``."""
    return ProcSample(
        t=max(p.t for p in samples),
        rss_mb=max(p.rss_mb for p in samples),
        hwm_mb=max(p.hwm_mb for p in samples),
        threads=max(p.threads for p in samples),
        fds=max(p.fds for p in samples),
        cpu_s=max(p.cpu_s for p in samples),
        sys_s=max(p.sys_s for p in samples),
    )


def memory(proc: Sequence[ProcSample], load: Load, start: float, end: float) -> Memory:
    during = [p for p in proc if start <= p.t <= end] or list(proc)
    at_start = at(proc, start)
    middle = (start + end) / 2
    first = [p for p in proc if p.t < middle] or list(proc[:1])
    second = [p for p in during if p.t >= middle] or during[-1:]
    last = during[-1]
    span = last.t - at_start.t
    done = load.done + start
    answered = int(((done >= at_start.t) & (done <= last.t) & load.ok).sum())
    cpu = last.cpu_s - at_start.cpu_s
    return Memory(
        idle=proc[0],
        start=at_start,
        end=last,
        after=proc[-1],
        first=_most(first),
        second=_most(second),
        cpu_cores=cpu / span if span > 0 else 0.0,
        sys_cores=(last.sys_s - at_start.sys_s) / span if span > 0 else 0.0,
        cpu_ms_per_answer=cpu * 1e3 / answered if answered else 0.0,
    )


def memory_table(m: Memory, engine_ms: float) -> Iterator[str]:
    rows = [
        ("RSS, records loaded, before any query", f"{m.idle.rss_mb:.0f} MB"),
        ("RSS when the timed load began (after the warm-up)", f"{m.start.rss_mb:.0f} MB"),
        ("RSS at the end of the load", f"{m.end.rss_mb:.0f} MB"),
        ("RSS growth over the timed load (end − began)",
         f"{m.end.rss_mb - m.start.rss_mb:+.0f} MB"),
        ("RSS, most in the first / second half of the load",
         f"{m.first.rss_mb:.0f} / {m.second.rss_mb:.0f} MB"),
        ("peak RSS (VmHWM) after the load", f"{m.after.hwm_mb:.0f} MB"),
        ("threads: idle / most in the first / second half",
         f"{m.idle.threads} / {m.first.threads} / {m.second.threads}"),
        ("open files: idle / most in the first / second half",
         f"{m.idle.fds} / {m.first.fds} / {m.second.fds}"),
        ("CPU during the load (of it system)", f"{m.cpu_cores:.2f} cores ({m.sys_cores:.2f})"),
        ("CPU per answered request", f"{m.cpu_ms_per_answer:.1f} ms"),
        ("the same questions in one thread, in-process (mean of the mix)", f"{engine_ms:.1f} ms"),
    ]  # fmt: skip
    yield _row(["node process", "value"])
    yield _row(["---", "---:"])
    for what, value in rows:
        yield _row([what, value])


def checks(outcome: Outcome, load: Load, m: Memory) -> list[tuple[str, bool, str]]:
    worker, ledger = outcome.worker, outcome.ledger
    answered = [(s[4], s[5]) for s in worker["samples"] if s[3] in ANSWERED]
    answered += [(w[2], w[3]) for w in worker["warmup"] if w[1] in ANSWERED]
    answered_ids = [query_id for query_id, _ in answered]
    told = sum((read_amount(charged) for _, charged in answered), Fraction(0))
    errors = len(load.statuses) - int(load.ok.sum())
    errors += sum(1 for w in worker["warmup"] if w[1] != OK)
    ids = ledger["ids"]
    rss_limit = m.first.rss_mb * (1 + RSS_NEW_HIGH_TOLERANCE)
    return [
        ("errors (timed and warm-up requests)", errors == 0, f"{errors}"),
        (
            "ledger entries == answered requests",
            len(ids) == len(answered_ids),
            f"{len(ids):,} == {len(answered_ids):,}",
        ),
        (
            "ledger query ids == answered query ids, no duplicates",
            len(set(ids)) == len(ids) and set(ids) == set(answered_ids),
            f"{len(set(ids) ^ set(answered_ids))} differ",
        ),
        (
            "ledger spent == the charges the answers reported (exact); totals verified",
            ledger["spent"] == told and told <= EPSILON * len(answered),
            f"{display_amount(ledger['spent'])} == {display_amount(told)} "
            f"(≤ {len(answered):,} × ε = {display_amount(EPSILON * len(answered))})",
        ),
        (
            "ledger entries charged to the certificate's identity",
            ledger["identities"] in ([COORDINATOR], []),
            ", ".join(ledger["identities"]) or "-",
        ),
        (
            f"RSS bounded: second half's most ≤ first half's most + {RSS_NEW_HIGH_TOLERANCE:.0%}",
            m.second.rss_mb <= rss_limit,
            f"{m.second.rss_mb:.0f} ≤ {rss_limit:.0f} MB",
        ),
        (
            "threads and open files bounded: second half's most ≤ first half's most",
            m.second.threads <= m.first.threads and m.second.fds <= m.first.fds,
            f"{m.second.threads} ≤ {m.first.threads}; {m.second.fds} ≤ {m.first.fds}",
        ),
        (
            "node log: no warnings or errors",
            not outcome.node_log_problems,
            "; ".join(outcome.node_log_problems)[:200] or "none",
        ),
        ("node stopped cleanly on SIGTERM", outcome.node_exit == 0, f"exit {outcome.node_exit}"),
    ]


def check_table(rows: Sequence[tuple[str, bool, str]]) -> Iterator[str]:
    yield _row(["check", "value", "pass"])
    yield _row(["---", "---", "---"])
    for what, ok, value in rows:
        yield _row([what, value, _verdict(ok)])


def environment(loadavg: float) -> str:
    versions = ", ".join(f"{name} {_version(name)}" for name in ("numpy", "opendp", "grpcio"))
    return (
        f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs "
        f"({platform.machine()}), shared by the node and the load generator; 1-minute load "
        f"average {loadavg:.1f} before the run (other work on the machine skews results); "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def report(outcome: Outcome) -> tuple[str, bool]:
    args, facts, worker = outcome.args, outcome.facts, outcome.worker
    load = Load.of(worker)
    start = float(worker["start"])
    m = memory(outcome.proc, load, start, float(worker["end"]))
    results = checks(outcome, load, m)
    overall = latency(load.latency_ms)
    answered = int(load.ok.sum())
    headline = (
        f"{answered:,} queries answered in {load.elapsed_s:.1f} s: "
        f"**{answered / load.elapsed_s:,.1f} QPS**"
    )
    if overall is not None:
        headline += f", p99 **{_ms(overall.p99)} ms** (p50 {_ms(overall.p50)} ms)"
    notes = [
        f"Node: `tiaki-node serve` in its own process, mutual TLS (a throwaway federation CA; "
        f"the clients present coordinator `{COORDINATOR}`'s certificate and check the node's "
        f"name `{NODE_ID}`), `server.max_workers` = {facts['threads']}, "
        f"`max_concurrent_per_identity` = {facts['slots']}, grace 10 s; "
        f"{facts['csv_rows']:,} synthetic records of "
        f"{facts['clients']:,} clients ({outcome.node.records:,} after bounding to k = {K}), "
        "the bench_node.py cache hard-linked beside a fresh ledger (WAL, synchronous=FULL).",
        f"Load: a second process, {args.clients} threads, each its own channel (its own TLS "
        "connection), asking back to back with no think time (a closed loop: QPS is what "
        f"{args.clients} busy clients get, latency includes queueing in the node) for "
        f"{args.seconds:g} s after one untimed warm-up round of each question per client "
        f"({len(worker['warmup'])} queries, in the ledger check). Each thread cycles through "
        "the four questions, threads staggered, ε = 0.01 each, a fresh query id per request. "
        "Latency: `NodeClient.query` wall time in the load generator (request encoding, "
        "RPC, answer decoding). QPS: answered requests / time from the start to the last "
        "reply.",
        "Questions: count by `region` (16 cells); mean of `sessions` (bounds 0..60) where "
        f"`service = budgeting`; count_clients by `service` (5 cells); histogram of "
        f"`sessions` with edges {', '.join(f'{e:g}' for e in HISTOGRAM_EDGES)} "
        f"({len(HISTOGRAM_EDGES) - 1} bins). An answer with the wrong number of cells, a "
        "replay or a wrong id would be counted as BAD_ANSWER.",
        f"Node process: /proc/<pid> every {SAMPLE_EVERY_S:g} s from the benchmark process. "
        "Bounded: over the second half of the timed load the node's RSS makes no new high "
        f"more than {RSS_NEW_HIGH_TOLERANCE:.0%} above the highest of the first half (node "
        "start, warm-up and the first half of the load, which holds the ramp up to the "
        "working set of the queries in flight), and threads and open files none at all. A "
        "leak keeps making new highs; a short run catches only a fast one, a longer "
        "`--seconds` a slower one. The load generator used "
        f"{worker['cpu_s'] / max(load.elapsed_s, 1e-9):.2f} cores over the load.",
        "'alone ms': plan + evaluate + release of each question in one thread of the "
        f"benchmark process before the node starts (median of {ENGINE_RUNS}): a request's "
        "cost to the node without concurrency, gRPC, TLS or the ledger. The node's CPU per "
        "answered request above it is what concurrency and the rest add.",
        "RSS swings by hundreds of MB from one second to the next at 1M records: each query "
        "in flight holds temporaries the size of a few columns, so single samples (began, "
        "end) are noisy; the highs per half are the steadier measure.",
        "Ledger: read with `PrivacyLedger` after the node stopped on SIGTERM; "
        f"{len(outcome.ledger['ids']):,} entries, {outcome.ledger['bytes'] / 1e6:.1f} MB on "
        "disk (the stored answer included in each entry).",
    ]
    lines = [
        f"# Load benchmark: {args.clients} clients × {args.seconds:g} s, one node with "
        f"{facts['csv_rows']:,} records",
        "",
        environment(facts["loadavg"]) + ".",
        "",
        headline + ".",
        "",
        *question_table(load, outcome.engine_ms),
        "",
        *error_table(worker, load),
        "",
        *window_table(load, outcome.proc, start, args.seconds),
        "",
        *memory_table(m, statistics.fmean(outcome.engine_ms.values())),
        "",
        *check_table(results),
        "",
        *(f"{i}. {note}" for i, note in enumerate(notes, start=1)),
    ]
    return "\n".join(lines) + "\n", all(ok for _, ok, _ in results)


# ---------------------------------------------------------------- main


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1..256")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
    return value


def _records(text: str) -> int:
    value = int(text)
    if value < 100:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 100 records")
    return value


def _stop_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=_positive_float, default=60.0, help="timed load")
    parser.add_argument(
        "--clients", type=_positive_int, default=20, help="concurrent clients (threads)"
    )
    parser.add_argument("--records", type=_records, default=1_000_000, help="about this many")
    parser.add_argument(
        "--server-threads",
        type=_positive_int,
        help=f"the node's server.max_workers (default: --clients, at least {MIN_SERVER_SLOTS})",
    )
    parser.add_argument("--seed", type=int, default=2, help="NGO profile (2: ~3 records/client)")
    worker = parser.add_argument_group("worker mode (internal)")
    worker.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--out", "--ca", "--cert", "--key"):
        worker.add_argument(name, type=Path, help=argparse.SUPPRESS)
    worker.add_argument("--address", help=argparse.SUPPRESS)
    worker.add_argument("--server-name", help=argparse.SUPPRESS)
    worker.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.server_threads is not None and args.server_threads * 8 < args.clients:
        # node.server admits at most max_workers x 8 RPCs at once; the rest are refused
        parser.error("--server-threads x 8 must be at least --clients")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # for tests.conftest
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    try:
        outcome = run(args)
    except KeyboardInterrupt:
        print("interrupted; the node and the load generator were stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"load benchmark failed: {exc}", file=sys.stderr)
        return 1
    text, passed = report(outcome)
    (RESULTS / "load.md").write_text(text, encoding="utf-8")
    print()
    print(text, end="")
    print(f"(written to {(RESULTS / 'load.md').relative_to(ROOT)})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
