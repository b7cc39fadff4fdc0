"""Node latency and memory, measured beside OpenDP's own Polars pipeline.

Run with ``make bench`` or::

    .venv/bin/python -m tests.bench.bench_node [--clients N] [--seed N] [--runs N]
                                                 [--skip-peer] [--profile]

Two questions, each at ε = 1 with every client bounded to k = 4 records:

- Q1: count of records grouped by ``region`` (16 public categories);
- Q2: mean of ``sessions`` (bounds 0..60) where ``service = budgeting``.

Each is timed at three levels of the node, then by the peer:

(a) engine: ``engine.plan`` + ``engine.evaluate`` + ``answering.release_cells``
    in this process (what the issue calls "at the node engine");
(b) service: ``NodeService.query`` in this process, including the ledger's
    durable (fsync'd) charge;
(c) gRPC: ``NodeClient.query`` over loopback to a node running in its own
    process (the same process gives the node's RSS);
peer: OpenDP's Polars pipeline on the same CSV, timed over everything an
    analyst pays per query (context, query, ``release()``, ``collect()``).

The synthetic CSV and the imported store are cached under
``bench-results/cache/`` keyed by (clients, seed); each run starts a fresh
ledger. The table goes to stdout and to ``bench-results/node.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

from coordinator.client import NodeClient, new_query_id
from node import answering, engine
from node.config import NodeConfig, load_config
from node.importer import import_csv
from node.server import create_server
from node.service import NodeService, open_service
from node.store import StoreError, load_dataset
from node.synth import MAX_CLIENTS, MAX_EPISODES, REGIONS, write_csv
from tests.bench.workload import Timing, measure, memory_mb
from tiaki.answer import Answer
from tiaki.budget import PrivacyDefinition
from tiaki.query import Bounds, InSet, PrivacyCost, Query, QueryKind

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
K = 4
EPSILON = Fraction(1)
ENGINE_TARGET_MS = 30.0
GRPC_TARGET_MS = 50.0
RSS_TARGET_MB = 500.0
WARMUP = 3
PEER_WARMUP = 1
PROFILE_CALLS = 20
ANALYST = "bench"
IDENTITY = "bench"
POLICY: dict[str, Any] = {  # generous, so the bench never runs out of budget
    "privacy_definition": "pure",
    "budget": {"limit": 1_000_000, "period": "none", "lifetime_limit": None},
    "per_query_max": 10,
    "max_records_per_client": K,
}

_COST = PrivacyCost(PrivacyDefinition.PURE, EPSILON)
QUESTIONS: dict[str, Query] = {
    "Q1 group-by count": Query(kind=QueryKind.COUNT, cost=_COST, group_by=("region",)),
    "Q2 filtered mean": Query(
        kind=QueryKind.MEAN,
        cost=_COST,
        column="sessions",
        bounds=Bounds(0, 60),
        filters=(InSet("service", ("budgeting",)),),
    ),
}


# ---------------------------------------------------------------- timing


# ---------------------------------------------------------------- the node


@dataclass(frozen=True)
class Node:
    config_path: Path
    csv: Path
    facts: dict[str, Any]  # what building and loading took, record counts


def prepare_node(clients: int, seed: int) -> Node:
    """The cached CSV and store for (clients, seed), built on first use; a fresh ledger."""
    from tests.conftest import write_node_config  # the test suite's node.yaml writer

    cache = RESULTS / "cache" / f"clients{clients}-seed{seed}"
    csv, marker = cache / "clients.csv", cache / "built.json"
    config_path = write_node_config(cache / "node", node_id="ngo-bench", policy=POLICY)
    config = load_config(config_path)
    facts: dict[str, Any] = json.loads(marker.read_text()) if marker.exists() else {}
    try:
        load_dataset(config)
    except StoreError:
        facts = {}
    if not facts:
        print(f"building the cache in {cache} (once) ...", flush=True)
        start = time.perf_counter()
        facts["csv_rows"] = write_csv(csv, clients, seed)
        facts["synth_s"] = time.perf_counter() - start
        start = time.perf_counter()
        report = import_csv(config, csv)
        facts["import_s"] = time.perf_counter() - start
        if not report.committed:
            raise SystemExit(f"import failed: {report.bad_row_count} bad rows")
        facts["clients"] = report.clients
        marker.write_text(json.dumps(facts))
    for suffix in ("", "-wal", "-shm"):  # every run charges a fresh ledger
        (config.data_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    return Node(config_path, csv, facts)


def engine_call(config: NodeConfig, service: NodeService, query: Query) -> Callable[[], object]:
    schema, policy = config.schema, config.policy

    def call() -> object:
        plan = engine.plan(query, schema, policy)
        aggregates = engine.evaluate(plan, service.datasets.current, schema)
        return answering.release_cells(plan, aggregates, policy.privacy_definition)

    return call


def service_call(service: NodeService, query: Query, calls: int) -> Callable[[], object]:
    """NodeService.query with a fresh query id per call; the ids are made untimed."""
    ids = iter([new_query_id() for _ in range(calls)])
    return lambda: service.query(IDENTITY, next(ids), ANALYST, query)


def serve_node(config_path: Path) -> None:
    """Child mode: open the service, serve on loopback, report memory on request."""
    before = memory_mb()["VmRSS"]
    service = open_service(load_config(config_path))
    loaded = memory_mb()
    running = create_server(service, "127.0.0.1:0")
    report = {"port": running.port, "rss_imports_mb": before, "rss_loaded_mb": loaded["VmRSS"]}
    print(json.dumps(report | {"memory": memory_mb()}), flush=True)
    for _ in sys.stdin:  # any line asks for memory; EOF means stop
        print(json.dumps({"memory": memory_mb()}), flush=True)
    running.stop(0)
    service.ledger.close()


class NodeProcess:
    """A node in its own process, serving on a loopback port."""

    def __init__(self, config_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_node", "--serve-node", str(config_path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self._read()
        self.port = int(self.hello["port"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the node process exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def memory(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("memory\n")
        self.proc.stdin.flush()
        return dict(self._read()["memory"])

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------- the peer


PEER_FRESH = "OpenDP Polars, new context"
PEER_SHARED = "OpenDP Polars, shared context"
PEER_COLUMNS = ("client_id", "region", "service", "sessions", "episode_start")


def peer_calls(csv: Path, facts: dict[str, Any], calls: int) -> dict[tuple[str, str], Any]:
    """OpenDP's Polars pipeline for each question, two ways.

    ``PEER_FRESH`` builds a one-query context per call: everything an analyst
    pays for one question. ``PEER_SHARED`` asks each of ``calls`` queries of a
    context built once (untimed, but reported) with ε split evenly, so each
    query still costs ε.
    """
    import opendp.prelude as dp
    import polars as pl

    dp.enable_features("contrib")  # already on via node.mechanisms; the peer states its own
    # A shared context's total ε (calls x ε) trips OpenDP's "ε should be <= 5" log warning.
    logging.getLogger("opendp.context").setLevel(logging.ERROR)
    start = time.perf_counter()
    frame = pl.read_csv(
        csv, columns=list(PEER_COLUMNS), schema_overrides={"sessions": pl.Int64}
    ).lazy()
    facts["peer_read_s"] = time.perf_counter() - start
    unit = dp.unit_of(contributions=1, identifier=pl.col("client_id"))
    # The node keeps each client's most recent records; so does this sort.
    keep = dp.polars.SortBy(by=pl.col("episode_start"), descending=True)
    # OpenDP needs a public bound on the number of rows for sums; the synthesiser's own maximum.
    margins = [dp.polars.Margin(by=(), max_length=MAX_CLIENTS * MAX_EPISODES)]
    keys = pl.DataFrame({"region": list(REGIONS)})

    def context(queries: int) -> Any:
        return dp.Context.compositor(
            data=frame,
            privacy_unit=unit,
            privacy_loss=dp.loss_of(epsilon=float(EPSILON) * queries),
            split_evenly_over=queries,
            margins=margins,
        )

    def q1(ctx: Any) -> Any:
        query = ctx.query().truncate_per_group(K, keep=keep)
        query = query.group_by("region").agg(dp.len(signed=True)).with_keys(keys)
        return query.release().collect()

    def q2(ctx: Any) -> Any:
        query = ctx.query().truncate_per_group(K, keep=keep)
        query = query.filter(pl.col("service") == "budgeting")
        mean = pl.col("sessions").dp.mean(bounds=(0, 60))  # type: ignore[attr-defined]
        return query.select(mean).release().collect()

    out: dict[tuple[str, str], Any] = {}
    facts["peer_context_s"] = []
    for question, ask in zip(QUESTIONS, (q1, q2), strict=True):
        out[question, PEER_FRESH] = lambda ask=ask: ask(context(1))
        start = time.perf_counter()
        shared = context(calls)
        facts["peer_context_s"].append(time.perf_counter() - start)
        out[question, PEER_SHARED] = lambda ask=ask, shared=shared: ask(shared)
    return out


PEER_NOTES = (
    f"Peer data: the same CSV read once with Polars, only the {len(PEER_COLUMNS)} columns the "
    "questions need (which favours the peer: OpenDP serialises the whole frame, data "
    "included, across its FFI for every context it builds). 'new context': context + query "
    "+ `release()` + `collect()` per call, the whole path for one question; 'shared "
    "context': one context per question, built once for all its calls (ε split evenly, so "
    "each call still costs ε = 1), timing query + `release()` + `collect()`.",
    "Peer privacy unit: `dp.unit_of(contributions=1, identifier=client_id)` plus "
    f"`truncate_per_group({K}, keep=SortBy(episode_start, descending))`: the most recent "
    f"{K} records per client, as the node keeps (the node breaks ties with a salted hash, "
    "Polars arbitrarily). The node bounds once at load; the peer truncates in every query.",
    "Peer Q1: `group_by(region).agg(dp.len(signed=True)).with_keys(16 regions)`; same "
    "discrete Laplace scale as the node (4).",
    "Peer Q2: `.dp.mean(bounds=(0, 60))` = noisy sum / noisy length with ε split evenly, "
    "as the node does, but without the node's midpoint shift: the peer's sum noise scale is "
    "480 against the node's 240 (in sessions). It also needs a public `max_length` margin "
    f"({MAX_CLIENTS * MAX_EPISODES:,} rows) that the node does not.",
)


# ---------------------------------------------------------------- profile


def profile(config: NodeConfig, service: NodeService) -> list[Path]:
    from pyinstrument import Profiler

    paths = []
    for number, query in enumerate(QUESTIONS.values(), start=1):
        call = engine_call(config, service, query)
        call()
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(PROFILE_CALLS):
            call()
        profiler.stop()
        path = RESULTS / f"profile-q{number}.txt"
        path.write_text(profiler.output_text(unicode=False, color=False))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- report


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def timing_table(results: dict[tuple[str, str], Timing | str]) -> Iterator[str]:
    targets = {"(a) engine": ENGINE_TARGET_MS, "(c) gRPC loopback": GRPC_TARGET_MS}
    yield _row(["question", "level", "runs", "median ms", "min ms", "max ms", "target", "pass"])
    yield _row(["---", "---", "---:", "---:", "---:", "---:", "---", "---"])
    for (question, level), result in results.items():
        if isinstance(result, str):
            yield _row([question, level, "0", "-", "-", "-", "-", f"not run: {result}"])
            continue
        target = targets.get(level)
        verdict = "-" if target is None else ("yes" if result.median < target else "**NO**")
        yield _row(
            [
                question,
                level,
                str(len(result.samples_ms)),
                f"{result.median:.2f}",
                f"{min(result.samples_ms):.2f}",
                f"{max(result.samples_ms):.2f}",
                "-" if target is None else f"< {target:.0f} ms",
                verdict,
            ]
        )


def facts_table(facts: dict[str, Any]) -> Iterator[str]:
    rss = facts["node_rss_loaded_mb"]
    rows = [
        ("records in the CSV", f"{facts['csv_rows']:,}", ""),
        ("clients", f"{facts['clients']:,}", ""),
        (f"records after bounding to k = {K}", f"{facts['bounded_rows']:,}", ""),
        ("synthesise CSV (cached)", f"{facts['synth_s']:.1f} s", ""),
        ("import CSV into the store (cached)", f"{facts['import_s']:.1f} s", ""),
        ("load the store (open_service)", f"{facts['load_s']:.2f} s", ""),
        ("node process RSS, imports only", f"{facts['node_rss_imports_mb']:.0f} MB", ""),
        (
            "node process RSS, records loaded",
            f"{rss:.0f} MB",
            f"< {RSS_TARGET_MB:.0f} MB: {'yes' if rss < RSS_TARGET_MB else '**NO**'}",
        ),
        ("node process peak RSS by then (VmHWM)", f"{facts['node_hwm_load_mb']:.0f} MB", ""),
        ("node process RSS, after the gRPC runs", f"{facts['node_rss_after_mb']:.0f} MB", ""),
        ("node process peak RSS at the end (VmHWM)", f"{facts['node_hwm_mb']:.0f} MB", ""),
    ]
    if "peer_read_s" in facts:
        rows.append(("peer: read CSV into Polars (once)", f"{facts['peer_read_s']:.1f} s", ""))
    if facts.get("peer_context_s"):
        built = " / ".join(f"{s:.2f} s" for s in facts["peer_context_s"])
        rows.append(("peer: build a shared context (Q1 / Q2)", built, ""))
    yield _row(["what", "value", "target"])
    yield _row(["---", "---:", "---"])
    for what, value, target in rows:
        yield _row([what, value, target])


def environment() -> str:
    versions = ", ".join(
        f"{name} {_version(name)}" for name in ("numpy", "opendp", "polars", "grpcio")
    )
    return (
        f"Python {platform.python_version()}, {versions}; {os.cpu_count()} CPUs "
        f"({platform.machine()}); {time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def sanity(answers: dict[str, Answer], peer: dict[str, Any]) -> str:
    """One released value per question from node and peer: same question, same ballpark."""
    total = sum(cell.value for cell in answers["Q1 group-by count"].cells)
    mean = answers["Q2 filtered mean"].cells[0].value
    text = f"Sanity (one noisy release each): node Q1 total {total:,.0f}, Q2 mean {mean:.3f}"
    if peer:
        peer_total = int(peer["Q1 group-by count"]["len"].sum())
        peer_mean = float(peer["Q2 filtered mean"]["sessions"][0])
        text += f"; peer Q1 total {peer_total:,}, Q2 mean {peer_mean:.3f}"
    return text + "."


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace) -> str:
    RESULTS.mkdir(exist_ok=True)
    node = prepare_node(args.clients, args.seed)
    facts = dict(node.facts)
    config = load_config(node.config_path)
    start = time.perf_counter()
    service = open_service(config)
    facts["load_s"] = time.perf_counter() - start
    facts["bounded_rows"] = service.datasets.current.n_records
    print(
        f"{facts['csv_rows']:,} records of {facts['clients']:,} clients; "
        f"loaded in {facts['load_s']:.2f} s",
        flush=True,
    )

    results: dict[tuple[str, str], Timing | str] = {}
    answers: dict[str, Answer] = {}
    calls = WARMUP + args.runs
    for question, query in QUESTIONS.items():
        print(f"{question}: engine, service ...", flush=True)
        results[question, "(a) engine"] = measure(
            engine_call(config, service, query), args.runs, WARMUP
        )
        results[question, "(b) NodeService.query"] = measure(
            service_call(service, query, calls), args.runs, WARMUP
        )

    child = NodeProcess(node.config_path)
    facts["node_rss_imports_mb"] = child.hello["rss_imports_mb"]
    facts["node_rss_loaded_mb"] = child.hello["rss_loaded_mb"]
    facts["node_hwm_load_mb"] = child.hello["memory"]["VmHWM"]
    try:
        with NodeClient(f"127.0.0.1:{child.port}", identity=IDENTITY) as client:
            for question, query in QUESTIONS.items():
                print(f"{question}: gRPC ...", flush=True)

                def over_grpc(query: Query = query, question: str = question) -> Answer:
                    answer = client.query(query, query_id=new_query_id(), analyst=ANALYST)
                    answers[question] = answer
                    return answer

                results[question, "(c) gRPC loopback"] = measure(over_grpc, args.runs, WARMUP)
        after = child.memory()
        facts["node_rss_after_mb"], facts["node_hwm_mb"] = after["VmRSS"], after["VmHWM"]
    finally:
        child.stop()

    peer_answers: dict[str, Any] = {}
    variants = (PEER_FRESH, PEER_SHARED)
    if args.skip_peer:
        results.update({(q, v): "--skip-peer" for q in QUESTIONS for v in variants})
    else:
        try:
            peer = peer_calls(node.csv, facts, PEER_WARMUP + args.peer_runs)
        except Exception as exc:  # the table says why instead of failing
            peer, reason = {}, _reason(exc)
            results.update({(q, v): reason for q in QUESTIONS for v in variants})
        for (question, variant), call in peer.items():
            print(f"{question}: {variant} ({args.peer_runs} runs, slow) ...", flush=True)
            try:
                if variant == PEER_FRESH:
                    peer_answers[question] = call()
                results[question, variant] = measure(call, args.peer_runs, PEER_WARMUP)
            except Exception as exc:
                results[question, variant] = _reason(exc)

    if args.profile:
        for path in profile(config, service):
            print(f"profile written to {path.relative_to(ROOT)}")
    service.ledger.close()

    order = sorted(results, key=lambda key: list(QUESTIONS).index(key[0]))
    lines = [
        f"# Node benchmark: {facts['csv_rows']:,} records, {facts['clients']:,} clients",
        "",
        environment() + ".",
        f"ε = {EPSILON} (pure DP), k = {K} records per client; fresh query id per call; "
        f"{WARMUP} warm-up calls per level ({PEER_WARMUP} for the peer).",
        "",
        *timing_table({key: results[key] for key in order}),
        "",
        *facts_table(facts),
        "",
        *(f"{i}. {note}" for i, note in enumerate(PEER_NOTES, start=1)),
    ]
    if answers and (peer_answers or args.skip_peer):
        lines += ["", sanity(answers, peer_answers)]
    for question in QUESTIONS:
        node_result = results[question, "(a) engine"]
        ratios = [
            f"{variant.split(', ')[-1]} {peer_result.median / node_result.median:,.0f}x"
            for variant in variants
            if isinstance(peer_result := results.get((question, variant)), Timing)
            and isinstance(node_result, Timing)
        ]
        if ratios:
            lines.append(f"{question}, peer median / node engine median: {', '.join(ratios)}.")
    return "\n".join(lines) + "\n"


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=330_000)  # about 1,000,000 records
    parser.add_argument("--seed", type=int, default=2, help="NGO profile (2: ~3 records/client)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per node level")
    parser.add_argument("--peer-runs", type=int, default=5, help="timed runs for the peer")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the engine level")
    parser.add_argument("--serve-node", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_node is not None:
        serve_node(args.serve_node)
        return 0
    report = run(args)
    (RESULTS / "node.md").write_text(report, encoding="utf-8")
    print()
    print(report, end="")
    print(f"(written to {(RESULTS / 'node.md').relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
